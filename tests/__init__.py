from tests import typecheck  # noqa: F401 (the suite's run-time type checker: tests.typecheck.checker)
