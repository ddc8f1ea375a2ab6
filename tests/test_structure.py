"""Real-size architectures on the meta device, and every adapter path resolved on real modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from model_adapters.tiny import TINY
from vlm_lens import HookedVLM
from vlm_lens.adapter import REGISTRY, get_module
from vlm_lens.loading import from_config

CONFIGS = Path(__file__).parent / "configs"

REAL = {
    # name: (layers, vision layers, d_model, d_mlp, heads, d_head, vocab, vision width)
    "llava-1.5-7b-hf": (32, 24, 4096, 11008, 32, 128, 32064, 1024),
    "paligemma-3b-pt-224": (18, 27, 2048, 16384, 8, 256, 257216, 1152),
    "qwen2-vl-7b-instruct": (28, 32, 3584, 18944, 28, 128, 152064, 1280),
}


@pytest.fixture(scope="module", params=sorted(REAL))
def real(request):
    config = transformers.AutoConfig.from_pretrained(CONFIGS / request.param)
    return request.param, HookedVLM.from_hf(from_config(config, "meta"))


def test_real_sizes_on_meta(real):
    name, model = real
    layers, vision, d_model, d_mlp, heads, d_head, vocab, d_vision = REAL[name]
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_vision_layers, cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.d_head, cfg.d_vocab, cfg.d_vision) == (
        layers, vision, d_model, d_mlp, heads, d_head, vocab, d_vision)
    assert next(model.hf_model.parameters()).device.type == "meta"
    names = model.hook_names()
    assert len(names) == layers * 12 + vision + 3
    assert f"blocks.{layers - 1}.hook_resid_post" in names and f"blocks.{layers}.hook_resid_post" not in names
    assert model.hook_shape(f"blocks.{layers - 1}.mlp.hook_post") == ("batch", "pos", d_mlp)
    assert model.hook_shape("blocks.0.attn.hook_z") == ("batch", "pos", heads, d_head)
    assert model.hook_shape("blocks.0.attn.hook_pattern") == ("batch", heads, "query", "key")
    assert model.hook_shape("vision.blocks.0.hook_resid_post")[-1] == d_vision


def test_real_size_hooks_resolve_to_modules(real):
    """Every hook of a real-size model sits on a module that exists: a moved module fails here."""
    _, model = real
    with model.hooks([(name, lambda a, h: None) for name in model.hook_names()]) as session:
        assert session._handles


@pytest.mark.parametrize("family", sorted(TINY))
def test_adapter_tables_resolve_against_real_module_trees(family):
    hf, _ = TINY[family]()
    adapter = REGISTRY.lookup(hf)
    for path in adapter.modules.values():
        get_module(hf, path)
    block = get_module(hf, adapter.modules["layers"])[0]
    for path in adapter.block.values():
        get_module(block, path)


def test_registry_refuses_duplicates():
    adapter = REGISTRY.lookup("LlavaForConditionalGeneration")
    from dataclasses import replace

    with pytest.raises(ValueError, match="already registered"):
        REGISTRY.register(replace(adapter, family="llava-again"))


@pytest.mark.parametrize("family", sorted(TINY))
def test_from_pretrained_local_directory(family, tmp_path, images=None):
    """The by-name path: a saved checkpoint and processor load back with identical outputs."""
    from tests.conftest import PROMPTS, make_images

    hf, processor = TINY[family]()
    hf.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = HookedVLM.from_pretrained(str(tmp_path))
    original = HookedVLM.from_hf(hf, processor)
    a = loaded.prepare(images=make_images(), prompts=PROMPTS)
    b = original.prepare(images=make_images(), prompts=PROMPTS)
    assert torch.equal(a.input_ids, b.input_ids)
    with torch.no_grad():
        assert torch.equal(loaded(a), original(b))
    assert not loaded.hf_model.training
