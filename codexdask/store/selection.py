"""Which patches are segmented: QC statistics -> QC flags -> informative indices -> batches.

Pure functions on patch pixels and the patch metadata table, no I/O. The QC rule is described in
``docs/semantics.md`` ("The QC rule"): a patch is *empty* when fewer than
``non_zero_perc_threshold`` of its nucleus pixels are non-zero, *noisy* when its nucleus mean is
below ``mean_intensity_threshold``, and *informative* when it is neither. Only informative patches
are segmented, and the choice is made from the metadata before any model task exists.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from codexdask.errors import ConfigError, StoreError
from codexdask.layout import FLAG_COLUMNS, QC_STAT_COLUMNS

__all__ = ["QCSums", "informative_indices", "parse_flags", "patch_statistics", "qc_flags",
           "split_batches"]

#: Spellings of True and False accepted in a flag column (a CSV may hold any of them).
_FLAG_VALUES = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}


def patch_statistics(patch: np.ndarray) -> dict[str, float]:
    """The six QC statistics of one patch, named as in ``layout.QC_STAT_COLUMNS``.

    Parameters
    ----------
    patch : numpy.ndarray
        ``(h, w, 2)``, any numeric dtype; channel 0 nucleus, channel 1 whole-cell.

    Returns
    -------
    dict
        ``{nucleus,wholecell}_{mean,std,non_zero_perc}`` as floats; std is the population std
        (ddof 0) and ``non_zero_perc`` is a fraction in [0, 1].
    """
    n = patch.shape[0] * patch.shape[1]
    values = []
    for c in range(2):
        channel = patch[..., c]
        values += [float(channel.mean(dtype=np.float64)), float(channel.std(dtype=np.float64)),
                   float(np.count_nonzero(channel)) / n]
    return dict(zip(QC_STAT_COLUMNS, values))


class QCSums:
    """The QC statistics of a patch read in pieces: sums that add up, then the statistics.

    For integer pixels of up to 16 bits the sums are exact (Python integers), so the mean equals
    :func:`patch_statistics`'s; the standard deviation comes from the sums of squares and may
    differ from numpy's two-pass value in the last bits.
    """

    def __init__(self) -> None:
        self.pixels = 0
        self.sums: list[int | float] = [0, 0]
        self.squares: list[int | float] = [0, 0]
        self.nonzero = [0, 0]

    def add(self, block: np.ndarray) -> None:
        """Count the pixels of ``block`` ``(h, w, 2)`` (nucleus, whole-cell)."""
        self.pixels += block.shape[0] * block.shape[1]
        exact = block.dtype.kind in "iub" and block.dtype.itemsize <= 2
        for c in range(2):
            channel = block[..., c]
            values = channel.astype(np.int64 if exact else np.float64)
            if exact:
                self.sums[c] += int(values.sum())
                self.squares[c] += int(np.square(values).sum())
            else:
                self.sums[c] += float(values.sum())
                self.squares[c] += float(np.square(values).sum())
            self.nonzero[c] += int(np.count_nonzero(channel))

    def statistics(self) -> dict[str, float]:
        """The six QC statistics, named as in ``layout.QC_STAT_COLUMNS``."""
        n = max(self.pixels, 1)
        values: list[float] = []
        for c in range(2):
            total, squares = self.sums[c], self.squares[c]
            if isinstance(total, int) and isinstance(squares, int):
                variance = (n * squares - total * total) / (n * n)  # exact, rounded once
            else:
                variance = max(squares / n - (total / n) ** 2, 0.0)
            values += [total / n, float(np.sqrt(variance)), self.nonzero[c] / n]
        return dict(zip(QC_STAT_COLUMNS, values))


def qc_flags(
    stats: pd.DataFrame,
    non_zero_perc_threshold: float = 0.05,
    mean_intensity_threshold: float = 1.0,
) -> pd.DataFrame:
    """QC flags from the nucleus statistics only (strict ``<``; whole-cell statistics play no part).

    Parameters
    ----------
    stats : pandas.DataFrame
        Needs ``nucleus_non_zero_perc`` and ``nucleus_mean``.

    Returns
    -------
    pandas.DataFrame
        Boolean columns ``is_empty, is_noisy, is_bad_patch, is_informative``, same index.
    """
    empty = stats["nucleus_non_zero_perc"].to_numpy() < non_zero_perc_threshold
    noisy = stats["nucleus_mean"].to_numpy() < mean_intensity_threshold
    bad = empty | noisy
    return pd.DataFrame(dict(zip(FLAG_COLUMNS, (empty, noisy, bad, ~bad))), index=stats.index)



def parse_flags(values: pd.Series, column: str, where: str = "the patch metadata") -> pd.Series:
    """A flag column as booleans, whatever a CSV round trip made of it.

    Parameters
    ----------
    values : pandas.Series
        Booleans, or strings / numbers spelling them (``True``, ``"false"``, ``1``, ``"0.0"``...).
    column, where : str
        The column's name and where it comes from, for the error message.

    Returns
    -------
    pandas.Series
        dtype bool, same index.

    Raises
    ------
    StoreError
        If a value spells neither True nor False.

    Examples
    --------
    >>> parse_flags(pd.Series(["True", "false", "1"]), "is_informative").tolist()
    [True, False, True]
    """
    if values.dtype == bool:
        return values
    mapped = values.astype(str).str.strip().str.lower().map(_FLAG_VALUES)
    if mapped.isna().any():
        raise StoreError(
            f"column {column!r} of {where} must hold True/False; found "
            f"{values[mapped.isna()].iloc[0]!r}"
        )
    return mapped.astype(bool)


def informative_indices(metadata: pd.DataFrame) -> np.ndarray:
    """Positions of the informative patches, ascending.

    Parameters
    ----------
    metadata : pandas.DataFrame
        Patch metadata with an ``is_informative`` column (bool, or spellings of it), one row per
        patch.

    Returns
    -------
    numpy.ndarray
        ``(K,)`` int64 row positions where ``is_informative`` is true.

    Raises
    ------
    StoreError
        If the column is missing or holds something other than True/False.
    """
    if "is_informative" not in metadata.columns:
        raise StoreError(
            "patches_metadata.csv has no 'is_informative' column; re-create the store with "
            "`codexdask patch`"
        )
    flags = parse_flags(metadata["is_informative"], "is_informative")
    return np.flatnonzero(flags.to_numpy(dtype=bool)).astype(np.int64)


def split_batches(indices: np.ndarray, size: int) -> list[np.ndarray]:
    """Cut ``indices`` into consecutive groups of at most ``size`` (the last may be shorter).

    Raises
    ------
    ConfigError
        If ``size`` < 1 (a batch size is a setting).

    Examples
    --------
    >>> [b.tolist() for b in split_batches(np.array([1, 3, 4, 6, 9]), 2)]
    [[1, 3], [4, 6], [9]]
    """
    if size < 1:
        raise ConfigError(f"batch size must be >= 1, got {size}")
    return [indices[start : start + size] for start in range(0, len(indices), size)]
