"""One small file per model family, each registering an ``Adapter`` and exporting a ``FamilySpec``.

Importing this package imports every family module in it (the core reaches it through the
``vlm_lens.adapters`` entry point), so a new family is one new file here: its adapter, registered
with the core, and its ``SPEC`` for the generic tests. ``SPECS`` maps family name -> spec.
"""

from __future__ import annotations

import importlib
import pkgutil

from model_adapters.testing import FamilySpec

_SHARED = {"common", "testing", "video"}


def _load() -> dict[str, FamilySpec]:
    specs = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name in _SHARED:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(module, "SPEC", None)
        if not isinstance(spec, FamilySpec):
            raise TypeError(f"model_adapters.{info.name} exports no SPEC (a FamilySpec) beside its adapter")
        if spec.family != module.ADAPTER.family:
            raise ValueError(
                f"model_adapters.{info.name}: SPEC is for {spec.family!r}, ADAPTER for {module.ADAPTER.family!r}"
            )
        specs[spec.family] = spec
    return specs


SPECS: dict[str, FamilySpec] = _load()
