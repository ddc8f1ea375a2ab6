"""Exceptions raised by vlm-lens, and the error contract they keep.

The contract, for the Python API and the command line alike:

- Every error a user can cause (a setting, an option, a file, a folder, an image, a model name, a tensor, an
  index) is a ``VLMLensError`` subclass, raised before any model load or long work wherever the input can be
  checked then, with one line that names the input, says what was wrong and what would be right.
- Settings are checked where they are defined, once: ``VRPConfig`` (its ``RULES``, one per numeric setting) and
  ``TrainConfig`` validate themselves, so the command line, config files and Python give the same error.
- The command line prints that line as ``error: ...`` and exits 2; a usage error (an unknown option, a value
  of the wrong type) is one line too. Only an unexpected exception prints the "this is a bug" line (exit 1);
  Ctrl-C prints how to resume and exits 130.
- Nothing returns a silently wrong number: an input that cannot give a correct result is refused.
"""

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


class InputIndexError(InputError, IndexError):
    """An index outside what it indexes (a patch outside its grid, a layer past the model's)."""


class InputTypeError(InputError, TypeError):
    """A value of the wrong kind (a hook function that returns something other than a tensor of the activation's shape)."""


class InputKeyError(InputError, KeyError):
    """A name that is not among those there are (the message lists them)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


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
