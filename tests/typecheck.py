"""The run-time type checker the test suite runs under (pyproject's ``--jaxtyping-packages``): every annotated
shape and type in vlm_lens, model_adapters and analyses is checked on each call while the tests run. beartype, with
PEP 484's numeric tower (an int passes where a float is annotated, as type checkers read it). Named here rather
than in the option because jaxtyping's option cannot take a call with arguments beside several packages."""

from beartype import BeartypeConf, beartype

checker = beartype(conf=BeartypeConf(is_pep484_tower=True))
