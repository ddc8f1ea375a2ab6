"""The error contract for settings, walked from their definitions: every study setting and every command-line
option refuses a wrong type or an out-of-range value with the project's own one-line error (exit 2 on the command
line), before any model loads. A new setting without a rule fails here, not in a user's run."""

from __future__ import annotations

import dataclasses

import pytest
import typer

from analyses import training
from analyses.cli import app, main
from analyses.study.config import OPTIONS, RULES, VRPConfig
from vlm_lens.errors import DataError, InputError

FIELDS = {f.name: str(f.type) for f in dataclasses.fields(VRPConfig)}
NUMERIC = {name for name, kind in FIELDS.items() if "int" in kind or "float" in kind}
# settings of a fixed set of words, and a value outside it
WORDS = {
    "dtype": "float8",
    "device": "gpu",
    "device_map": "everywhere",
    "storage_dtype": "int8",
    "attention_view": "side",
    "lens": "sharp",
    "tuned_lens": "no/such/lens",
}


def _bad_values(name: str) -> list:
    kind = FIELDS[name]
    values = [b for b in RULES[name].breaks if "float" in kind or float(b).is_integer()]
    return [
        (int(b) if "float" not in kind else b,) if "tuple" in kind else (int(b) if "float" not in kind else b)
        for b in values
    ]


def test_every_numeric_setting_has_a_rule():
    assert NUMERIC <= set(RULES) <= set(FIELDS)


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_setting_refuses_values_its_rule_breaks(name):
    bad = _bad_values(name)
    assert bad, name
    for value in bad:
        with pytest.raises(DataError) as raised:
            VRPConfig(**{name: value})
        message = str(raised.value)
        assert message.startswith(f"{name} must be {RULES[name].says}") and "\n" not in message, message


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_each_setting_refuses_a_wrong_type(name):
    wrong = "many" if name in NUMERIC else [1.5] if "tuple" in FIELDS[name] else 3
    if "str" in FIELDS[name] and "tuple" not in FIELDS[name]:
        wrong = 3
    with pytest.raises(DataError, match=f"^{name} must be"):
        VRPConfig(**{name: wrong})


@pytest.mark.parametrize("name", sorted(WORDS))
def test_each_word_setting_refuses_a_word_it_does_not_know(name):
    with pytest.raises(DataError) as raised:
        VRPConfig(**{name: WORDS[name]})
    assert repr(WORDS[name]) in str(raised.value) and "\n" not in str(raised.value)


def _options(command: str) -> dict[str, str]:
    """A command's options: parameter name -> its flag."""
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {p.name: p.opts[0] for p in click_command.params if p.opts and p.opts[0].startswith("--")}


def _bad_option_value(name: str) -> str | None:
    if name in WORDS:
        return WORDS[name]
    if name in RULES:
        value = _bad_values(name)[0]
        return str(value[0] if isinstance(value, tuple) else value)
    return None


def test_vrp_options_are_built_from_the_one_settings_table():
    """Each ``OPTIONS`` setting is a ``vrp`` option with its help and VRPConfig's default, unset unless typed (so a
    config file's value stands): the command line cannot drift from the settings' definitions."""
    params = {p.name: p for p in typer.main.get_command(app).commands["vrp"].params}  # type: ignore[attr-defined]
    fields = {f.name: f for f in dataclasses.fields(VRPConfig)}
    for name, help in OPTIONS.items():
        param = params[name]
        assert param.opts == [f"--{name.replace('_', '-')}"] and param.help.startswith(help), name
        default = fields[name].default
        assert param.default is None and (default is None or f"(default {default})" in param.help), name


def test_every_vrp_option_that_is_a_setting_is_in_the_catalogue():
    options = _options("vrp")
    settings = set(options) & set(FIELDS)
    assert settings - {"model", "benchmark", "annotations", "format", "images"} <= set(RULES) | set(WORDS)
    assert len(settings) >= 15  # the catalogue below covers each of them


@pytest.mark.parametrize("name", sorted(set(_options("vrp")) & (set(RULES) | set(WORDS))))
def test_each_vrp_option_out_of_range_is_one_line_and_exit_2(name, tmp_path, capsys):
    flag, value = _options("vrp")[name], _bad_option_value(name)
    assert main(["vrp", flag, value, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert name in err or flag in err or repr(value) in err, err
    assert not (tmp_path / "run" / "extraction").exists()  # refused before any model work


@pytest.mark.parametrize(
    "args, says",
    [
        (["--steps", "0"], "steps must be an integer of at least 1"),
        (["--seed", "-1"], "seed must be an integer of at least 0"),
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--answers", "sentences"], "answers must be one of"),
    ],
)
def test_train_toy_options_out_of_range_are_one_line_and_exit_2(args, says, tmp_path, capsys):
    assert main(["train-toy", "llava", *args, "--out", str(tmp_path / "toy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == err.splitlines()[0] and says in err, err
    assert not (tmp_path / "toy").exists()


@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", 0),
        ("batch_size", 0),
        ("warmup", 0),
        ("image_size", 8),
        ("eval_n", 0),
        ("steps", 1.5),
        ("family", "llama"),
    ],
)
def test_train_config_refuses_out_of_range(field, value):
    with pytest.raises(InputError, match=field if field != "family" else "no family 'llama'"):
        training.TrainConfig(**{"family": "llava", field: value})


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--seed", "-1"],
        ["shapes", "--out", "x", "--seed", "-1"],
        ["vrp", "--n", "many"],
        ["vrp", "--no-such-option", "1"],
        ["no-such-command"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "--help" in err, err


# Where a built-in exception is still raised on purpose: an adapter author's mistake (a module map or
# registration that cannot work, found when the adapter is registered), never a user's input.
ADAPTER_AUTHORS = {"vlm_lens/adapter.py", "model_adapters/__init__.py", "vlm_lens/hooks.py"}
BUILT_IN = {
    "ValueError",
    "TypeError",
    "RuntimeError",
    "KeyError",
    "IndexError",
    "Exception",
    "AssertionError",
    "OSError",
}


def test_user_reachable_code_raises_only_the_projects_own_exceptions():
    """Every ``raise`` of a built-in exception in the packages, outside the adapter-author checks, would print as a
    bug on the command line: there should be none (the project's errors subclass the built-ins they refine)."""
    import ast
    from pathlib import Path

    root = Path(__file__).parents[1]
    found = []
    for package in ("vlm_lens", "model_adapters", "analyses"):
        for path in sorted((root / package).rglob("*.py")):
            where = str(path.relative_to(root))
            if where in ADAPTER_AUTHORS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                    if isinstance(call, ast.Name) and call.id in BUILT_IN:
                        found.append(f"{where}:{node.lineno} raises {call.id}")
    assert not found, found


@pytest.mark.parametrize(
    "settings",
    [
        dict(n_resamples=0),
        dict(temperature=0),
        dict(dense_C=0),
        dict(sparse_C=-1.0),
        dict(hidden_layers=(-1,)),
        dict(seed=-1),
        dict(k=0),
        dict(top_p=1.5),
        dict(val_fraction=0.5, test_fraction=0.5),
        dict(mask_fraction=0),
    ],
)
def test_the_issues_cases_by_hand(settings):
    """The values the issue found passing validation, written out here rather than read from RULES (a rule
    loosened by mistake would otherwise test itself)."""
    with pytest.raises(DataError):
        VRPConfig(**settings)
    VRPConfig(n_resamples=1, temperature=0.01, top_p=1.0, val_fraction=0.4, test_fraction=0.4, random_controls=0)
