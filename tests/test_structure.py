"""Real-size architectures on the meta device, and every adapter path resolved on real modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from model_adapters import SPECS
from tests.conftest import FAMILIES
from vlm_lens import HookedVLM
from vlm_lens.adapter import REGISTRY, get_module
from vlm_lens.loading import from_config

CONFIGS = Path(__file__).parent / "configs"
REAL = {size.config: (family, size) for family in FAMILIES for size in SPECS[family].real}


def test_every_family_has_a_real_size_config():
    assert {family for family, _ in REAL.values()} == set(FAMILIES)


@pytest.fixture(scope="module", params=sorted(REAL))
def real(request):
    config = transformers.AutoConfig.from_pretrained(CONFIGS / request.param)
    return request.param, HookedVLM.from_hf(from_config(config, "meta"))


def test_real_sizes_on_meta(real):
    name, model = real
    family, size = REAL[name]
    layers, vision, d_mlp, heads, d_head, d_vision = (
        size.n_layers,
        size.n_vision_layers,
        size.d_mlp,
        size.n_heads,
        size.d_head,
        size.d_vision,
    )
    cfg = model.cfg
    assert cfg.family == family
    assert (
        cfg.n_layers,
        cfg.n_vision_layers,
        cfg.d_model,
        cfg.d_mlp,
        cfg.n_heads,
        cfg.d_head,
        cfg.d_vocab,
        cfg.d_vision,
    ) == (layers, vision, size.d_model, d_mlp, heads, d_head, size.d_vocab, d_vision)
    assert next(model.hf_model.parameters()).device.type == "meta"
    names = model.hook_names()
    # 27 per block (15 of them opt-in), a DeepStack point after each injecting layer; a cross-attention layer has
    # hook_cross_attn_out and no hook_rot_q, hook_rot_k, hook_mlp_in or split inputs (6 fewer); grouped-query
    # attention has no hook_attn_in (1 fewer per other layer); vision, projector, embed, final x2
    per_block = 27 - (cfg.n_key_value_heads != cfg.n_heads)
    cross = len(cfg.cross_layers) * (6 - (cfg.n_key_value_heads != cfg.n_heads))
    assert len(names) == layers * per_block + len(model.vocab.injected_layers) - cross + vision + 4
    assert f"blocks.{layers - 1}.hook_resid_post" in names and f"blocks.{layers}.hook_resid_post" not in names
    assert model.hook_shape(f"blocks.{layers - 1}.mlp.hook_post") == ("batch", "pos", d_mlp)
    assert model.hook_shape("blocks.0.attn.hook_z") == ("batch", "pos", heads, d_head)
    kv_heads = model.hf_model.config.get_text_config().num_key_value_heads
    assert model.hook_shape("blocks.0.attn.hook_k") == ("batch", "pos", kv_heads, d_head)
    assert model.hook_shape("blocks.0.attn.hook_result") == ("batch", "pos", heads, size.d_model)
    assert model.hook_shape("ln_final.hook_scale") == ("batch", "pos", 1)
    assert model.hook_shape("blocks.0.attn.hook_pattern") == ("batch", heads, "query", "key")
    assert model.hook_shape("vision.blocks.0.hook_resid_post")[-1] == d_vision
    for layer in cfg.cross_layers:  # keys and values from the image: its tile patches, not the sequence
        assert model.hook_shape(f"blocks.{layer}.attn.hook_k") == ("batch", "image_key", kv_heads, d_head)
        assert model.hook_shape(f"blocks.{layer}.hook_cross_attn_out") == ("batch", "pos", size.d_model)


def test_real_size_hooks_resolve_to_modules(real):
    """Every hook of a real-size model sits on a module that exists: a moved module fails here."""
    _, model = real
    with model.hooks([(name, lambda a, h: None) for name in model.hook_names()]) as session:
        assert session._handles


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_tables_resolve_against_real_module_trees(family):
    hf, _ = SPECS[family].tiny()
    adapter = REGISTRY.lookup(hf)
    for path in adapter.modules.values():
        get_module(hf, path)
    block = get_module(hf, adapter.modules["layers"])[0]
    for path in adapter.block.values():
        get_module(block, path)


@pytest.mark.parametrize("family", FAMILIES)
def test_registry_refuses_duplicates(family):
    from dataclasses import replace

    hf, _ = SPECS[family].tiny()
    adapter = REGISTRY.lookup(hf)
    assert adapter.family == family
    with pytest.raises(ValueError, match="already registered"):
        REGISTRY.register(replace(adapter, family=family + "-again"))


@pytest.mark.parametrize("family", FAMILIES)
def test_from_pretrained_local_directory(family, tmp_path):
    """The by-name path: a saved checkpoint and processor load back with identical outputs."""
    from tests.conftest import PROMPTS, make_images

    hf, processor = SPECS[family].tiny()
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
