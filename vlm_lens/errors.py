"""Exceptions raised by vlm-lens. Each says what was wrong and what would be right."""

from __future__ import annotations


class VLMLensError(Exception):
    """Base class of every error vlm-lens raises on purpose."""


class UnsupportedModelError(VLMLensError, TypeError):
    """The HF model's class has no registered adapter."""


class HookNameError(VLMLensError, KeyError):
    """A hook name that this model does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message and hide its line breaks
        return str(self.args[0]) if self.args else ""


class LayerIndexError(HookNameError, IndexError):
    """A hook name or cache key whose layer is outside the model."""


class UnknownToyError(VLMLensError, KeyError):
    """A toy name the zoo does not have."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InputError(VLMLensError, ValueError):
    """Inputs that cannot mean what the caller intended (images, prompts, tensors)."""


class ImageTokenMismatchError(InputError):
    """The prompt's image placeholders and the images given do not match."""


class DeviceMismatchError(InputError):
    """Input tensors on another device or dtype than the model."""


class DataError(VLMLensError, ValueError):
    """A file, folder or setting that cannot give a correct result: benchmark records, images, run folders."""


class HookSessionError(VLMLensError, RuntimeError):
    """Hook sessions used out of order, re-entered, or a model run from inside one of its own hooks."""


class VLMLensWarning(UserWarning):
    """Something that still runs but may not mean what the caller expects (the message says what to change)."""


class ModelLoadError(VLMLensError, OSError):
    """A model name that is neither a zoo toy, a local checkpoint folder, nor a hub id that can be fetched."""
