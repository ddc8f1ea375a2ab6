"""Real SAELens SAEs (standard, top-k, JumpReLU) loaded from a SAELens-format folder on disk and spliced into every
family with ``model.add_sae``: the features are the SAE's own ``encode`` of the host activation, and the spliced
model's output is the model with the SAE's own reconstruction put in by hand.

SAELens 6 needs TransformerLens 3.x (``transformer-lens<4``), so it is not in the ``all`` extra (TL 4.x); install
``.[saelens]`` (``.ci/run`` does, in a second environment). Without ``sae_lens`` these tests skip, saying why."""

from __future__ import annotations

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens", reason="SAELens is not installed: pip install -e '.[saelens]'")

HOST = "blocks.1.hook_resid_post"
D_SAE = 24


def _sae(kind: str, d_in: int, folder):
    """An SAE of ``kind`` with seeded weights, saved in SAELens's format and loaded back from the folder."""
    make = {
        "standard": lambda: sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=d_in, d_sae=D_SAE)),
        "topk": lambda: sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=d_in, d_sae=D_SAE, k=4)),
        "jumprelu": lambda: sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=d_in, d_sae=D_SAE)),
    }
    sae = make[kind]()
    sae.cfg.metadata.hook_name = HOST
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if name != "threshold" else 0.05))
            if name == "threshold":
                param.abs_()
    sae.save_model(folder)
    return sae_lens.SAE.load_from_disk(folder)


@pytest.mark.parametrize("kind", ["standard", "topk", "jumprelu"])
def test_a_saelens_sae_from_disk_spliced_into_the_model(model, inputs, kind, tmp_path):
    sae = _sae(kind, model.cfg.d_model, tmp_path / kind)
    assert type(sae).__module__.startswith("sae_lens")
    with torch.no_grad():
        logits, clean = model.run_with_cache(inputs, names_filter=HOST)
        x = clean[HOST]
        by_hand = model.run_with_hooks(inputs, fwd_hooks=[(HOST, lambda act, hook: sae(act))])  # SAELens's forward
        try:
            names = model.add_sae(sae)  # the host from the SAE's own cfg.metadata.hook_name
            assert f"{HOST}.hook_sae_acts_post" in names
            spliced, cache = model.run_with_cache(inputs)
            torch.testing.assert_close(cache[f"{HOST}.hook_sae_acts_post"], sae.encode(x), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(spliced, by_hand, atol=1e-5, rtol=1e-5)
            assert (spliced - logits).abs().max() > 1e-4  # the reconstruction is not the activation
            model.reset_saes()
            model.add_sae(sae, use_error_term=True)  # with the error term the model's output is its own
            torch.testing.assert_close(model(inputs), logits, atol=1e-5, rtol=1e-5)
        finally:
            model.reset_saes()
    if kind == "topk":
        assert int((cache[f"{HOST}.hook_sae_acts_post"] != 0).sum(-1).max()) <= 4
