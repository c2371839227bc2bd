"""Numba compilation of the post-processing kernels.

Every kernel is compiled lazily (at its first call, per argument types) in nopython mode with
the GIL released, so Dask worker threads run kernels in parallel. Machine code is cached on
disk (``cache=True``): next to the sources when the install is writable, otherwise in numba's
user-wide cache directory (``NUMBA_CACHE_DIR`` or ``~/.cache/numba``), so later processes load
it in well under a second instead of compiling for several seconds. When no cache location is
writable at all, the kernels are compiled in memory in each process; nothing fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

F = TypeVar("F", bound=Callable[..., Any])


def jit(func: F) -> F:
    """Compile ``func`` with ``numba.njit(nogil=True)``, cached on disk where possible."""
    return _compile(func, {})


def jit_inline(func: F) -> F:
    """Like :func:`jit`, for small helpers that numba inlines into their callers."""
    return _compile(func, {"inline": "always"})


def _compile(func: F, options: dict[str, Any]) -> F:
    try:
        return cast(F, numba.njit(cache=True, nogil=True, **options)(func))
    except RuntimeError:  # numba found no writable cache directory for this file
        return cast(F, numba.njit(cache=False, nogil=True, **options)(func))
