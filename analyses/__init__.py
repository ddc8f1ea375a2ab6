"""The science of the reliability study, as functions over a ``HookedVLM``.

- ``logit_lens``: per-layer logits, the truth margin (Eq. 3), margin curves, peak and separation layers
- ``decomposition``: attention and MLP writes projected on the margin direction; update norms
- ``interventions``: neurons (zero / mean / clamp / scale), random controls, MLP bypass, head
  ablation, attention knockout; composable, exception-safe
- ``patch_masking``: top-q% attended patches vs random, at token or pixel level
- ``patching``: causal tracing over image tokens and spans
- ``attention_structure``: spatial entropy, component counts, DBSCAN, lock-then-diffuse
- ``evaluation``: accuracy over a dataset before/after an intervention, with paired-bootstrap CIs
- ``shapes`` and ``zoo``: the Shapes benchmark and the toy models trained on it
- ``plots``: plotly figures (the only module that imports plotly)
"""
