"""One small file per model family, each registering an ``Adapter`` with the core.

The core finds them through the ``vlm_lens.adapters`` entry points (see pyproject.toml);
importing this package registers all of them too.
"""

from model_adapters import llava, paligemma, qwen2_vl  # noqa: F401  (registration)
