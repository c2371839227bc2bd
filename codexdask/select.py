"""Which patches are segmented, and in which groups (pure functions on the patch metadata)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import StoreError


def informative_indices(metadata: pd.DataFrame) -> np.ndarray:
    """Positions of the informative patches, ascending.

    Parameters
    ----------
    metadata : pandas.DataFrame
        Patch metadata with a boolean ``is_informative`` column, one row per patch.

    Returns
    -------
    numpy.ndarray
        ``(K,)`` int64 row positions where ``is_informative`` is true.
    """
    if "is_informative" not in metadata.columns:
        raise StoreError(
            "patches_metadata.csv has no 'is_informative' column; re-create the store with "
            "`codexdask patch`"
        )
    flags = metadata["is_informative"]
    if flags.dtype != bool:
        flags = flags.astype(str).str.lower().map({"true": True, "false": False})
        if flags.isna().any():
            raise StoreError("patches_metadata.csv: 'is_informative' must hold True/False values")
    return np.flatnonzero(flags.to_numpy(dtype=bool)).astype(np.int64)


def split_batches(indices: np.ndarray, size: int) -> list[np.ndarray]:
    """Cut ``indices`` into consecutive groups of at most ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    return [indices[start : start + size] for start in range(0, len(indices), size)]
