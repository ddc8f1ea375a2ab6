"""Circuit discovery with images: which components, positions and image patches account for a metric's change.

- ``nodes``: ``attribute(model, clean, corrupted, metric, at=[hooks], method="gradient" | "ig", steps=N)``, one row
  per node (position, head, neuron, image patch) in a DataFrame, with the completeness check; ``on_grid`` lays a
  hook's scores on an image's patch grid
- ``edges``: ``edge_attribution`` (EAP, EAP-IG) between the residual stream's writers and readers, ``run_circuit``
  (edges not kept are cut, for real), ``faithfulness`` of the top-k circuits, ``path_patch`` of one edge

Validated against real activation patching in ``tests/test_attribution.py``.
"""

from analyses.attribution.edges import Graph, edge_attribution, faithfulness, path_patch, run_circuit
from analyses.attribution.nodes import Attribution, attribute, on_grid

__all__ = [
    "Attribution",
    "Graph",
    "attribute",
    "edge_attribution",
    "faithfulness",
    "on_grid",
    "path_patch",
    "run_circuit",
]
