"""From per-object sums and window measures to the table's columns, object set by object set.

The sums pass gives each object's exact sums per layer; a compartment is a union of layers (a
matched cell is its nucleus plus its cytoplasm), so its sums are added up here, and the
statistics are derived from them: ``mean = sum / count``, ``std`` (population) from the sum of
squares, ``min``/``max``; the quantiles come from the windows pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from codexdask.quantification.sums import ObjectSums

__all__ = ["COMPARTMENT_LAYERS", "Measured", "compartment_stats", "concat_measured"]

#: Compartments of each object set and the layers (positions in its pass 1 layers) they unite.
COMPARTMENT_LAYERS: dict[str, dict[str, dict[str, tuple[int, ...]]]] = {
    "matched": {"cell": {"cell": (0, 1), "nucleus": (0,), "cytoplasm": (1,)}},
    "raw": {"cell": {"cell": (0,)}, "nucleus": {"nucleus": (0,)}},
}


@dataclasses.dataclass
class Measured:
    """The measured objects of one object set, one row each.

    Attributes
    ----------
    keys : pandas.DataFrame
        ``patch_index``, ``patch_id``, ``label`` (the object's id in its patch's mask).
    stats : dict
        Compartment -> statistic -> ``(n, C)`` float64 (``mean`` always).
    places : dict
        Compartment -> DataFrame ``X_centroid``, ``Y_centroid`` (slide pixels), ``Area``
        (pixels), exact.
    shapes : dict
        Shape mask (``cell``, ``nucleus``) -> DataFrame of
        :data:`~codexdask.quantification.shapes.SHAPE_COLUMNS`; empty without morphology.
    """

    keys: pd.DataFrame
    stats: dict[str, dict[str, np.ndarray]]
    places: dict[str, pd.DataFrame]
    shapes: dict[str, pd.DataFrame]

    def __len__(self) -> int:
        return len(self.keys)


def compartment_stats(
    sums: ObjectSums, layers: Sequence[int], origin: tuple[int, int], stats: Sequence[str],
    quantiles: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """One compartment's statistics and place, for the objects of ``sums``.

    Parameters
    ----------
    sums : ObjectSums
        ``K`` objects of one patch (already restricted to the kept ones).
    layers : sequence of int
        The layers the compartment unites.
    origin : (int, int)
        Slide coordinates of the patch's top-left pixel.
    stats : sequence of str
        Statistics besides the mean: ``sum``, ``std``, ``min``, ``max`` (others are quantiles).
    quantiles : mapping of str to numpy.ndarray
        Quantile name -> ``(C, K)`` from the windows pass.

    Returns
    -------
    stats : dict of str to numpy.ndarray
        Statistic -> ``(K, C)`` float64; NaN for an object with no pixel in the compartment.
    place : pandas.DataFrame
        ``K`` rows: ``X_centroid``, ``Y_centroid``, ``Area``.
    """
    layers = list(layers)
    count = sums.counts[layers].sum(axis=0)
    total = sums.sums[layers].sum(axis=0)  # exact in the integer accumulators
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (total / count).T
        out: dict[str, np.ndarray] = {"mean": mean}
        if "sum" in stats:
            out["sum"] = np.where(count > 0, total, np.nan).T.astype(np.float64)
        if "std" in stats:
            squares = sums.squares[layers].sum(axis=0)  # type: ignore[index]
            variance = (squares - total.astype(np.float64) * mean.T) / count
            out["std"] = np.sqrt(np.clip(variance, 0, None)).T
        for name, values in (("min", sums.minima), ("max", sums.maxima)):
            if name in stats:
                reduce = np.min if name == "min" else np.max
                picked = reduce(values[layers], axis=0).astype(np.float64)  # type: ignore[index]
                out[name] = np.where(count > 0, picked, np.nan).T
        out.update({name: np.asarray(q, np.float64).T for name, q in quantiles.items()})
        coords = sums.coords[layers].sum(axis=0)
        place = pd.DataFrame({
            # One rounding of the exact coordinate sum, as the mean of the pixels' coordinates.
            "X_centroid": (coords[1] + origin[1] * count) / count,
            "Y_centroid": (coords[0] + origin[0] * count) / count,
            "Area": count,
        })
    return out, place


def concat_measured(parts: Sequence[Measured]) -> Measured:
    """One table from the tables of several patches, in order."""
    if not parts:
        return Measured(pd.DataFrame(columns=["patch_index", "patch_id", "label"]), {}, {}, {})
    keys = pd.concat([p.keys for p in parts], ignore_index=True)
    stats = {c: {s: np.concatenate([p.stats[c][s] for p in parts]) for s in parts[0].stats[c]}
             for c in parts[0].stats}
    places = {c: pd.concat([p.places[c] for p in parts], ignore_index=True)
              for c in parts[0].places}
    shapes = {name: pd.concat([p.shapes[name] for p in parts], ignore_index=True)
              for name in parts[0].shapes}
    return Measured(keys, stats, places, shapes)
