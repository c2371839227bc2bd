"""One error hierarchy for codexdask.

Every error a user can cause is a :class:`CodexDaskError`; its message says what is wrong and how
to fix it. The command line prints the message on one line and exits with status 2.
"""

from __future__ import annotations


class CodexDaskError(Exception):
    """Base class of every error codexdask raises on bad input, configuration or environment."""

    exit_code = 2


class InputError(CodexDaskError, ValueError):
    """An array handed to codexdask has the wrong shape, dtype or values."""


class ConfigError(CodexDaskError, ValueError):
    """A configuration key is unknown or a value is out of range."""


class SlideError(CodexDaskError):
    """A slide file cannot be read, is truncated, or lacks the requested channels."""


class StoreError(CodexDaskError):
    """A patch store or result store is missing, incomplete or not written by codexdask."""


class OutputExistsError(CodexDaskError):
    """The output directory already holds another run (use --resume or --overwrite)."""


class ModelLoadError(CodexDaskError):
    """Mesmer weights could not be found or loaded."""


class SegmenterError(CodexDaskError):
    """A segmenter is unknown, misconfigured, or failed even at the smallest batch."""


class ClusterError(CodexDaskError):
    """A Dask cluster could not be started or reached."""
