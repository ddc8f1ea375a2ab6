"""Tables as people read them: whole numbers printed as whole numbers, wide tables that scroll in their section.

    tidy(frame)               # float columns of counts and layers (every value whole) as integers
    markdown(frame)           # tidy, three decimals for the rest
    html_table(frame)         # tidy, three decimals, inside a box that scrolls sideways when the table is wide

A float column is shown as integers only when its name says it counts or indexes something (``n``, ``k``,
``*layer*``, ``*count*``, ``questions``, ``units``, ``rank``, ``size``, ``tokens``, ``seed``) and every value is
whole: an accuracy that happens to be 1.0 stays ``1.000``.
"""

from __future__ import annotations

import re

import pandas as pd

WHOLE = re.compile(r"(^n$|^n_|_n$|^k$|layer|count|questions|units|rank|size|tokens|seed|^index$|heads)")
SCROLL_CSS = ".scroll{overflow-x:auto;max-width:100%}"


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its whole-number float columns (by name and value) as nullable integers."""
    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if not pd.api.types.is_float_dtype(values) or not WHOLE.search(str(column)):
            continue
        present = values.dropna()
        if len(present) and (present == present.round()).all():
            out[column] = values.astype("Int64")
    return out


def _shown(frame: pd.DataFrame, missing: str) -> pd.DataFrame:
    """Integer columns (tidy's, and those that were integers already) as their digits, ``missing`` where a value is
    absent: the printers read a row of mixed columns as floats, so an int64 layer beside a float share would print
    as ``3.000``, and a column holding a NaN as floats again."""
    out = tidy(frame)
    for column in out.columns:
        dtype = out[column].dtype
        if isinstance(dtype, pd.Int64Dtype) or (
            pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        ):
            out[column] = [missing if pd.isna(v) else str(int(v)) for v in out[column]]
    return out


def markdown(frame: pd.DataFrame, index: bool = False) -> str:
    return _shown(frame, "").to_markdown(index=index, floatfmt=".3f")


def html_table(frame: pd.DataFrame, index: bool = False) -> str:
    body = _shown(frame, "-").to_html(index=index, float_format=lambda x: f"{x:.3f}", border=0, na_rep="-")
    return f"<div class='scroll'>{body}</div>"
