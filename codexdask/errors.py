"""One error hierarchy for codexdask, and the rule that picks the class.

Every error a user can cause is a :class:`CodexDaskError`; its message says what is wrong and how
to fix it. The command line prints the message on one line and exits with status 2.

Which class, by what went wrong (not by which module noticed it):

- :class:`InputError` — *what is processed* is wrong: an array, label image or table handed in
  has the wrong shape, dtype or values (a 3-D mask, NaN pixels, negative labels, a table without
  the columns a function reads), and so are the sizes that describe data to be drawn (the shape
  or cell radius of a synthetic slide).
- :class:`ConfigError` — *how it is processed* is wrong: a choice or a tuning value is unknown,
  out of range, or contradicts another — whether it comes from a YAML file, a command-line flag
  or a keyword argument. A mode name, ``tie_break="nope"``, ``pickle_compression="rar"``,
  ``batch_size=0``, an IoU threshold of 0, a segmenter option such as the watershed's
  ``nucleus_diameter_um`` or Mesmer's ``pad_mode``: all ConfigErrors, wherever they are checked.
  A value that is also a configuration key (``image_mpp``) is always a ConfigError.
- :class:`StateError` — the right data and settings at the wrong time: a step asked for before
  the step it depends on (saving results before computing them).
- :class:`SlideError`, :class:`StoreError`, :class:`OutputExistsError` — files on disk: a slide
  that cannot be read, a patch or result store that is missing or incomplete, an output directory
  that already holds a run.
- :class:`ModelLoadError` — Mesmer weights; :class:`SegmenterError` — a segmenter is unknown, not
  installed, returned the wrong shape, or failed even at the smallest batch;
  :class:`ClusterError` — a Dask cluster cannot be started, reached or trusted.

Bugs in codexdask itself are not CodexDaskErrors: they surface as ordinary Python exceptions.
"""

from __future__ import annotations


class CodexDaskError(Exception):
    """Base class of every error codexdask raises on bad input, configuration or environment."""

    exit_code = 2


class InputError(CodexDaskError, ValueError):
    """An array or table handed to codexdask has the wrong shape, dtype or values."""


class ConfigError(CodexDaskError, ValueError):
    """A configuration key, flag or keyword option is unknown, out of range or contradictory."""


class StateError(CodexDaskError, RuntimeError):
    """A step was asked for before the step it depends on has run."""


class SlideError(CodexDaskError):
    """A slide file cannot be read, is truncated, or lacks the requested channels."""


class StoreError(CodexDaskError):
    """A patch store or result store is missing, incomplete or not written by codexdask."""


class OutputExistsError(CodexDaskError):
    """The output directory already holds another run (use --resume or --overwrite)."""


class ModelLoadError(CodexDaskError):
    """Mesmer weights could not be found or loaded."""


class SegmenterError(CodexDaskError):
    """A segmenter is unknown or not installed, returned bad labels, or failed on some input."""


class ClusterError(CodexDaskError):
    """A Dask cluster could not be started, reached, or connected to securely."""
