"""The VLM Reliability Probe (VRP) study: extract -> predictors -> causal checks -> tables -> report.

- ``config``: ``VRPConfig``, every number the study uses
- ``extract``: resumable per-question extraction into shards
- ``results``: one dataclass per table, passed from step to step
- ``predictors``: Table 6 (and 2b, 9): who predicts correctness
- ``causal``: Table 3 (where the margin forms, who builds it) and Tables 4-5 (ablations)
- ``pipeline``: ``run(cfg, out)``, the whole study
- ``report``: ``tables.json``, ``tables.md``, ``report.html``, and ``compare`` across runs
"""
