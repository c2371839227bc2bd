"""Seconds per stage of a run: what the tasks measure and ``run_manifest.json`` records.

A batch (or a group of compute blocks) goes through *prepare* (CPU), the GPU-pinned task (of
which the *network* proper) and *finish* (CPU); then repair, and for logical patches stitching.
Each task adds its seconds to a :class:`StageSeconds` that travels with its output, so the
driver gets per-stage totals without extra tasks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["StageSeconds", "stage_report"]


@dataclasses.dataclass(frozen=True)
class StageSeconds:
    """Seconds spent in each stage (summed over tasks, or one task's share).

    Attributes
    ----------
    prepare : float
        CPU work before the network (Mesmer: resize, normalisation, CLAHE, tiling).
    pinned : float
        Inside the GPU-pinned task, all of it.
    network : float
        Of ``pinned``, inside the network calls (device copies included).
    finish : float
        CPU work after the network (Mesmer: untiling, deep watershed, resize back).
    """

    prepare: float = 0.0
    pinned: float = 0.0
    network: float = 0.0
    finish: float = 0.0

    def __add__(self, other: StageSeconds) -> StageSeconds:
        return StageSeconds(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[float, float, float, float]:
        """``(prepare, pinned, network, finish)``."""
        return (self.prepare, self.pinned, self.network, self.finish)

    def share(self, parts: int) -> StageSeconds:
        """One of ``parts`` equal shares (a task's seconds spread over its patches or blocks)."""
        return StageSeconds(*(value / max(1, parts) for value in self.as_tuple()))

    def as_dict(self) -> dict[str, float]:
        """``{"prepare_s", "pinned_s", "network_s", "finish_s"}`` (a patch's summary)."""
        return {f"{field.name}_s": value
                for field, value in zip(dataclasses.fields(self), self.as_tuple(), strict=True)}

    @classmethod
    def from_dict(cls, seconds: dict[str, float]) -> StageSeconds:
        """The inverse of :meth:`as_dict`."""
        return cls(*(seconds[f"{field.name}_s"] for field in dataclasses.fields(cls)))

    @property
    def infer(self) -> float:
        """What the ``infer_s`` column records: preparation plus the pinned task."""
        return self.prepare + self.pinned


def stage_report(stages: StageSeconds, *, repair_s: float, stitch_s: float | None,
                 megapixels: float, graph_s: float | None, gpus: int) -> dict[str, Any]:
    """The ``stages`` entry of ``run_manifest.json``.

    Parameters
    ----------
    stages : StageSeconds
        Totals over the tasks of this run.
    repair_s, stitch_s : float
        Seconds of repair, and of stitching (``None`` outside logical patches).
    megapixels : float
        Pixels segmented by this run, in millions.
    graph_s : float or None
        Wall seconds of the computation (``None``: nothing computed).
    gpus : int
        GPU workers the pinned tasks ran on (0: none pinned).

    Returns
    -------
    dict
        Seconds per stage, the same per megapixel, and with GPUs the share of the wall time
        each GPU spent in its pinned tasks and in the network (``pinned_busy_fraction``,
        ``gpu_busy_fraction``).
    """
    seconds = {**stages.as_dict(), "pinned_other_s": stages.pinned - stages.network,
               "repair_s": repair_s}
    if stitch_s is not None:
        seconds["stitch_s"] = stitch_s
    report: dict[str, Any] = {**seconds, "megapixels": megapixels}
    if megapixels > 0:
        report["s_per_megapixel"] = {name[:-2]: value / megapixels
                                     for name, value in seconds.items()}
    busy = graph_s * gpus if graph_s and gpus else None
    report["pinned_busy_fraction"] = stages.pinned / busy if busy else None
    report["gpu_busy_fraction"] = stages.network / busy if busy else None
    return report
