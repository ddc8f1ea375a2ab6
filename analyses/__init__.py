"""The science of the reliability study, as functions over a ``HookedVLM`` (see docs/architecture.md).

- ``answers``: where the answer is read, what it is, and the one scorer that decides "correct"
- ``logit_lens``: per-layer logits, the truth margin (Eq. 3), margin curves, peak and separation layers
- ``decomposition``: attention and MLP writes projected on the margin direction; update norms
- ``interventions``: neurons / residual units (zero, mean, clamp, scale), random controls, MLP bypass,
  head ablation, attention knockout; frozen dataclasses, composable with ``+``
- ``patch_masking``: top-q% attended patches vs random, at token or pixel level
- ``patching``: causal tracing over image tokens and spans
- ``attention_structure``: spatial entropy, component counts, DBSCAN, lock-then-diffuse
- ``probes``, ``consistency``, ``stats``: correctness probes, self-consistency, statistics with CIs
- ``evaluation``: accuracy over a dataset before/after an intervention, with paired-bootstrap CIs
- ``data``: ``Example``, the benchmark loaders and the Shapes generator; ``training``: the toy zoo
- ``plots``: plotly figures (the only module here that imports plotly)
- ``study``: the VLM Reliability Probe pipeline; ``cli``: the ``vlm-lens`` command
"""
