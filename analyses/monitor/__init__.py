"""A reliability monitor you deploy: fit a probe on a run, save it, and score every answer as the model gives it.

- ``monitor``: ``ReliabilityMonitor`` (fit from arrays, ``score``, ``generate``, ``save`` / ``load``), the signals
- ``features``: the three representations a monitor reads (answer position, image tokens, vision features)
- ``selective``: risk-coverage curves, AURC, accuracy at a coverage, the selective-prediction table
- ``card``: what a monitor was fitted on (the checkpoint's fingerprint) and its files (safetensors + JSON)

Fitting from a study's run folder is ``analyses.study.monitoring.fit_run`` (the study uses this room, not the
other way round); the command line is ``vlm-lens monitor fit | eval | apply``.
"""
