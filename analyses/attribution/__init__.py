"""Circuit discovery with images: which components, positions and image patches account for a metric's change.

- ``nodes``: ``attribute(model, clean, corrupted, metric, at=[hooks], method="gradient" | "ig", steps=N)``, one row
  per node (position, head, neuron, image patch) in a DataFrame, with the completeness check; ``on_grid`` lays a
  hook's scores on an image's patch grid

Validated against real activation patching in ``tests/test_attribution.py``.
"""
