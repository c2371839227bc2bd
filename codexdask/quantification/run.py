"""``codexdask quantify``: every object's marker intensities and shape, out of core.

Two passes over a finished run, each a Dask graph on the same cluster:

1. **Sums** — one task per chunk of each patch reads the chunk's masks and, a group of channels
   at a time, the slide under it, sums each object's pixels per layer
   (:mod:`codexdask.quantification.sums`) and measures the shapes of the objects the chunk
   holds whole; a tree of ``combine`` tasks adds the chunks of a patch up.
2. **Windows** — each other object (crossing a chunk edge; every object when quantiles are
   asked for) is owned by the chunk holding its box's centre; one task per owner reads the
   union of its objects' boxes and measures their shapes and pixel quantiles.

In ``patches`` mode, where patches overlap, an object is kept only by the patch whose core holds
its box's centre and whose inner edges it does not touch (``docs/quantification.md``). The
tables are written by :mod:`codexdask.quantification.writers`, ``quant_manifest.json`` last.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
from distributed import Client, as_completed

from codexdask.boxes import Box
from codexdask.config import QuantifyConfig, make_config
from codexdask.engine import cluster
from codexdask.errors import OutputExistsError, SlideError, StateError
from codexdask.layout import (
    CELL,
    DONE_ARRAY,
    MANIFEST,
    QUANT_DIR,
    QUANT_MANIFEST,
    QUANT_OUTPUTS,
    QUANT_WORK_DIR,
    RESULT_STORE,
    quant_part_name,
)
from codexdask.outputs import open_result_store
from codexdask.quantification.names import marker_names
from codexdask.quantification.ownership import patch_cores, patches_mode_keep
from codexdask.quantification.sums import ObjectSums
from codexdask.quantification.table import (
    COMPARTMENT_LAYERS,
    Measured,
    compartment_stats,
    concat_measured,
)
from codexdask.quantification.tasks import (
    SHAPE_COMPARTMENTS,
    Chunk,
    ChunkResult,
    Sources,
    combine_parts,
    sums_task,
    window_task,
)
from codexdask.quantification.windows import align_measures
from codexdask.quantification.writers import write_manifest, write_tables
from codexdask.store.patch_store import PatchStore, open_patch_store
from codexdask.store.slide import open_slide

__all__ = ["QuantResult", "quantify"]

#: Chunks added up per combine task on a worker.
FAN_IN = 8


@dataclasses.dataclass
class QuantResult:
    """What :func:`quantify` wrote.

    Attributes
    ----------
    out_dir : Path
    tables : dict
        Object set (``cell``; ``nucleus`` too for raw masks) -> :class:`Measured`.
    markers : list of str
        The channel names (table columns).
    manifest : dict
        The content of ``quant_manifest.json``.
    """

    out_dir: Path
    tables: dict[str, Measured]
    markers: list[str]
    manifest: dict[str, Any]

    def summary(self) -> str:
        """A few lines describing the quantification (what the command prints)."""
        counts = ", ".join(f"{len(t)} {name}s" for name, t in self.tables.items())
        return "\n".join([f"quantified: {counts} x {len(self.markers)} channels",
                          f"tables in {self.out_dir}",
                          f"wall time: {self.manifest['timings']['total_s']:.1f} s"])


def quantify(
    results: str | Path,
    out: str | Path | None = None,
    config: QuantifyConfig | None = None,
    *,
    client: Client | None = None,
    progress: bool = False,
    **options: Any,
) -> QuantResult:
    """Measure every object of a finished run on the slide's channels.

    Parameters
    ----------
    results : path
        The run's output directory (holding ``masks.zarr`` and ``run_manifest.json``).
    out : path, optional
        Output directory; default ``results/quant``.
    config : QuantifyConfig, optional
        Settings; keyword ``options`` override single keys (e.g. ``stats=["median"]``).
    client : distributed.Client, optional
        Run on this cluster instead of the one ``config`` describes.
    progress : bool
        Show the progress of each pass.

    Returns
    -------
    QuantResult

    Raises
    ------
    StateError
        ``results`` holds no finished segmentation.
    SlideError
        Missing or unreadable slide, a slide of another shape than the store's, names that do
        not fit the channels.
    OutputExistsError
        ``out`` holds a quantification and neither ``resume`` nor ``overwrite`` is set.
    """
    started = time.perf_counter()
    base = dataclasses.asdict(config) if config is not None else {}
    config = make_config(QuantifyConfig, base, options)
    results = Path(results).resolve()
    if not (results / MANIFEST).is_file() or not (results / RESULT_STORE).is_dir():
        raise StateError(
            f"{results} holds no finished segmentation (no {MANIFEST}); run `codexdask segment "
            f"STORE --out {results}` to the end first (or --resume it)")
    group = open_result_store(results / RESULT_STORE, mode="r")
    patch_store = open_patch_store(group.attrs["codexdask"]["patch_store"])
    slide_path = _slide_path(config, patch_store)
    slide = open_slide(slide_path)
    expected = tuple(patch_store.attrs.get("slide_shape", ()))
    if (slide.height, slide.width) != expected:
        raise SlideError(
            f"slide {slide_path} is {slide.height} x {slide.width} pixels but the run segmented "
            f"a slide of {expected[0]} x {expected[1]}; pass the slide the patch store was cut "
            "from (--slide)")
    markers, given_names, names_from = marker_names(slide, config.markers, config.antibodies)
    out_dir = Path(out).resolve() if out is not None else results / QUANT_DIR
    work = _prepare_out_dir(out_dir, config)

    done = np.asarray(group[DONE_ARRAY][:], dtype=bool)
    patches = [int(i) for i in patch_store.informative_indices if done[i]]
    chunks, size = plan_chunks(patch_store, group, patches, config.chunk_size)
    quantiles = config.quantiles()
    sources = Sources(
        results=str(results / RESULT_STORE), slide=slide_path, work=str(work),
        slide_shape=(slide.height, slide.width),
        n_channels=slide.n_channels, dtype=slide.dtype.str, masks=config.masks,
        extra=bool({"std", "min", "max"} & set(config.stats)),
        quantiles=tuple(quantiles.values()), morphology=config.morphology)

    timings: dict[str, float] = {}
    with cluster.connect(config.cluster(), client) as dask_client:
        start = time.perf_counter()
        sums = _sums_pass(dask_client, sources, chunks, progress)
        timings["sums_s"] = time.perf_counter() - start
        kept, left_out = _keep(patch_store, sums, patches)
        start = time.perf_counter()
        windows = _windows_pass(dask_client, sources, patch_store, size, kept, progress)
        timings["windows_s"] = time.perf_counter() - start
    tables = {name: _measured(name, config, patch_store, kept, windows, slide.n_channels)
              for name in COMPARTMENT_LAYERS[config.masks]}
    start = time.perf_counter()
    manifest = {
        "slide": slide_path, "results": str(results), "masks": config.masks,
        "split_mode": patch_store.split_mode, "statistics": ["mean", *config.stats],
        "morphology": config.morphology, "chunk_size": list(size),
        "markers": {"names": markers, "given": given_names, "source": names_from},
        "objects": {name: len(t) for name, t in tables.items()}, "left_out": left_out,
        "image_mpp": patch_store.image_mpp, "n_chunks": sum(len(c) for c in chunks.values()),
    }
    write_tables(out_dir, tables, markers, given_names, config, manifest)
    timings["write_s"] = time.perf_counter() - start
    timings["total_s"] = time.perf_counter() - started
    manifest["timings"] = timings
    write_manifest(out_dir, manifest)
    shutil.rmtree(work, ignore_errors=True)
    return QuantResult(out_dir, tables, markers, manifest)


def _slide_path(config: QuantifyConfig, patch_store: PatchStore) -> str:
    source = config.slide or patch_store.attrs.get("source")
    if not source or source == "<array>":
        raise SlideError(
            f"the patch store {patch_store.path} was cut from an in-memory array, so it records "
            "no slide file; pass the slide with --slide")
    path = Path(source).resolve()
    if not path.exists():
        raise SlideError(
            f"slide {str(path)!r} does not exist; pass the slide the patch store was cut from "
            "with --slide")
    return str(path)


def _prepare_out_dir(out_dir: Path, config: QuantifyConfig) -> Path:
    """Refuse, resume or clear ``out_dir``; the manifest goes first. Returns the work folder."""
    started = (out_dir / QUANT_MANIFEST).exists() or (out_dir / QUANT_WORK_DIR).exists()
    if started and not (config.resume or config.overwrite):
        raise OutputExistsError(
            f"{out_dir} already holds a quantification; pass --resume to finish it, --overwrite "
            "to replace it, or choose another --out")
    (out_dir / QUANT_MANIFEST).unlink(missing_ok=True)
    if config.overwrite:
        for name in QUANT_OUTPUTS:
            path = out_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    work = out_dir / QUANT_WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    settings = work / "settings.json"
    wanted = json.dumps(dataclasses.asdict(config) | {"resume": None, "overwrite": None,
                                                      "scheduler": None, "n_workers": None,
                                                      "memory_limit": None}, sort_keys=True)
    if settings.exists() and settings.read_text() != wanted:
        raise OutputExistsError(
            f"the unfinished quantification in {out_dir} used other settings; --resume it with "
            "the same ones or pass --overwrite")
    settings.write_text(wanted)
    return work


def plan_chunks(patch_store: PatchStore, group: Any, patches: list[int],
                chunk_size: int | None) -> tuple[dict[int, list[Chunk]], tuple[int, int]]:
    """The chunks of each patch: the result store's chunks, or ``chunk_size``² squares.

    Returns
    -------
    chunks : dict
        Patch -> its chunks, row by row.
    size : (int, int)
        The chunks' height and width.
    """
    _, rows, cols = group[CELL].chunks
    if chunk_size is not None:
        rows = cols = int(chunk_size)
    out: dict[int, list[Chunk]] = {}
    for patch in patches:
        box = patch_store.patch_box(patch)
        height, width = box.shape
        corners = [(y, x) for y in range(0, height, rows) for x in range(0, width, cols)]
        out[patch] = [Chunk(patch, n, Box(y, x, min(y + rows, height), min(x + cols, width)),
                            (box.top, box.left), (height, width))
                      for n, (y, x) in enumerate(corners)]
    return out, (int(rows), int(cols))


def _sums_pass(client: Client, sources: Sources, chunks: dict[int, list[Chunk]],
               progress: bool) -> dict[int, dict[str, ChunkResult]]:
    """Pass 1: each patch's sums. Workers add up groups of :data:`FAN_IN` neighbouring chunks
    (so a task never holds more than that many chunks' objects: worker memory stays flat as the
    slide grows); the driver, which holds the table anyway, adds up the groups."""
    # Fresh keys on every call: a retry on the same cluster never meets a failed call's results.
    task = dask.delayed(sums_task, pure=False)
    groups = []
    for patch, patch_chunks in chunks.items():
        leaves = [task(sources, c, quant_part_name("sums", patch, c.number))
                  for c in patch_chunks]
        groups += [(patch, dask.delayed(combine_parts)(*leaves[i:i + FAN_IN]))
                   for i in range(0, len(leaves), FAN_IN)]
    results = collect(client, [group for _, group in groups], "quantify (sums)", progress)
    by_patch: dict[int, list[dict[str, ChunkResult]]] = {}
    for (patch, _), found in zip(groups, results, strict=True):
        by_patch.setdefault(patch, []).append(found)
    return {patch: combine_parts(*parts) for patch, parts in by_patch.items()}


def collect(client: Client, graphs: list[Any], label: str, progress: bool) -> list[Any]:
    """Compute ``graphs`` on the cluster; their results, in order.

    Each result is fetched as soon as it is ready and its future released, so a worker never
    holds more than the results still being fetched (its memory stays flat as the slide grows).
    With ``progress``, a line every 10 % of the tasks.
    """
    futures = client.compute(graphs)
    position = {future.key: i for i, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    started, shown = time.perf_counter(), -1
    for done, (future, value) in enumerate(as_completed(futures, with_results=True), start=1):
        results[position[future.key]] = value
        future.release()
        percent = 100 * done // len(futures)
        if progress and percent // 10 > shown:
            shown = percent // 10
            print(f"{label}: {percent}% done ({done} of {len(futures)} tasks, "
                  f"{time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
    return results


def _keep(patch_store: PatchStore, sums: dict[int, dict[str, ChunkResult]],
          patches: list[int]) -> tuple[dict[int, dict[str, ChunkResult]], dict[str, int]]:
    """Each patch's objects measured by it: all of them, except in ``patches`` mode."""
    left_out = {"outside_core": 0, "touching_patch_edge": 0}
    if patch_store.split_mode != "patches":
        return sums, left_out
    cores = patch_cores(patch_store)
    kept: dict[int, dict[str, ChunkResult]] = {}
    for patch in patches:
        kept[patch] = {}
        for name, found in sums[patch].items():
            keep, outside, touching = patches_mode_keep(patch_store, patch, cores[patch],
                                                        found.sums.boxes)
            left_out["outside_core"] += outside
            left_out["touching_patch_edge"] += touching
            kept[patch][name] = ChunkResult(select(found.sums, keep), found.measures)
    return kept, left_out


def select(found: ObjectSums, keep: np.ndarray) -> ObjectSums:
    """The objects ``keep`` (bool ``(K,)``) of ``found``."""
    def pick(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[..., keep]
    return ObjectSums(found.ids[keep], found.counts[:, keep], found.sums[..., keep],
                      found.boxes[keep], found.coords[..., keep], pick(found.squares),
                      pick(found.minima), pick(found.maxima))


def _owners(found: ObjectSums, size: tuple[int, int], width: int) -> np.ndarray:
    """The chunk number holding each object's box centre."""
    rows = (found.boxes[:, 0] + found.boxes[:, 2] - 1) // 2 // size[0]
    cols = (found.boxes[:, 1] + found.boxes[:, 3] - 1) // 2 // size[1]
    return rows * (-(-width // size[1])) + cols


def _windows_pass(client: Client, sources: Sources, patch_store: PatchStore,
                  size: tuple[int, int], kept: dict[int, dict[str, ChunkResult]],
                  progress: bool) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Pass 2: shapes (of the objects no chunk held whole) and quantiles (of every object),
    one task per owner chunk; results by (object set, patch)."""
    if not sources.morphology and not sources.quantiles:
        return {}
    task = dask.delayed(window_task, pure=False)
    graphs: dict[tuple[str, int, int], Any] = {}
    for patch, sets in kept.items():
        box = patch_store.patch_box(patch)
        for name, found in sets.items():
            wanted = np.ones(len(found.sums.ids), bool)
            if not sources.quantiles:  # shapes only: those pass 1 could not measure
                done = [m["labels"] for m in found.measures] + [np.zeros(0, np.uint32)]
                wanted = ~np.isin(found.sums.ids, np.concatenate(done))
            owners = _owners(found.sums, size, box.shape[1])
            for owner in np.unique(owners[wanted]):
                mine = wanted & (owners == owner)
                b = found.sums.boxes[mine]
                window = Box(int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()),
                             int(b[:, 3].max()))
                graphs[(name, patch, int(owner))] = task(
                    sources, name, patch, window, (box.top, box.left), found.sums.ids[mine],
                    quant_part_name(f"window_{name}", patch, int(owner)))
    results = collect(client, list(graphs.values()), "quantify (shapes)", progress)
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for (name, patch, _), value in zip(graphs, results, strict=True):
        out.setdefault((name, patch), []).append(value)
    return out


def _measured(name: str, config: QuantifyConfig, patch_store: PatchStore,
              kept: dict[int, dict[str, ChunkResult]],
              windows: dict[tuple[str, int], list[dict[str, Any]]],
              n_channels: int) -> Measured:
    """The table of one object set: every kept object of every patch, in patch order."""
    parts = []
    compartments = COMPARTMENT_LAYERS[config.masks][name]
    quantile_names = list(config.quantiles())
    shape_names = [c for c in SHAPE_COMPARTMENTS if c in compartments] if config.morphology \
        else []
    for patch, sets in kept.items():
        found = sets[name].sums
        box = patch_store.patch_box(patch)
        measures = sets[name].measures + windows.get((name, patch), [])
        shapes, quantiles = align_measures(measures, found.ids, shape_names, list(compartments),
                                           len(quantile_names), n_channels)
        stats, places = {}, {}
        for compartment, layers in compartments.items():
            stats[compartment], places[compartment] = compartment_stats(
                found, layers, (box.top, box.left), config.stats,
                dict(zip(quantile_names, quantiles.get(compartment, ()), strict=False)))
        keys = pd.DataFrame({"patch_index": patch,
                             "patch_id": int(patch_store.metadata["patch_id"].iloc[patch]),
                             "label": found.ids.astype(np.int64)})
        parts.append(Measured(keys, stats, places, shapes))
    return concat_measured(parts)
