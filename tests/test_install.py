"""The install respects the user's environment: torch a floor, never a pin; accelerate wherever device_map is
offered; a checkpoint loads straight onto the device it is asked for, never through host memory first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from tests.conftest import tiny
from vlm_lens.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def _requirements() -> dict[str, Requirement]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {req.name: req for req in map(Requirement, deps)}


def test_torch_is_a_floor_never_a_pin():
    torch_req = _requirements()["torch"]
    operators = {spec.operator for spec in torch_req.specifier}
    assert operators == {">="}, torch_req  # a pin (==, ~=, <) would replace a user's CUDA torch on install
    assert torch_req.specifier.contains(torch.__version__.split("+")[0])  # and the torch the tests run on is allowed


def test_accelerate_comes_with_device_map():
    assert "accelerate" in _requirements()  # transformers' device_map needs it


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    model = tiny("llava")
    model.hf_model.save_pretrained(folder)
    model.processor.save_pretrained(folder)
    return folder, model


def test_a_named_device_is_loaded_onto_directly(checkpoint, monkeypatch):
    """transformers is asked to place every weight on the device as it reads it (device_map={"": device}), and the
    model is never moved afterwards (no Module.to: a 7B model would first fill 14 GB of host memory)."""
    import transformers

    from vlm_lens.loading import load_pretrained

    folder, reference = checkpoint
    seen, moves = [], []
    cls = type(reference.hf_model)
    original = cls.from_pretrained.__func__

    def spy(klass, *args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return original(klass, *args, **kwargs)

    monkeypatch.setattr(getattr(transformers, cls.__name__), "from_pretrained", classmethod(spy))
    to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moves.append(a or k) or to(self, *a, **k))
    hf, _ = load_pretrained(str(folder), device="cpu")
    assert seen == [{"": "cpu"}] and moves == []
    assert {p.device.type for p in hf.parameters()} == {"cpu"}
    for (name, ours), theirs in zip(hf.state_dict().items(), reference.hf_model.state_dict().values()):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0, msg=name)


def test_meta_is_refused_with_the_way_to_a_weightless_model(checkpoint):
    from vlm_lens.loading import load_pretrained

    with pytest.raises(InputError, match="from_config") as raised:
        load_pretrained(str(checkpoint[0]), device="meta")
    assert "\n" not in str(raised.value)
