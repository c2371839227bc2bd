"""Faults on a real LocalCluster: a worker process dies mid-run, the driver is killed and the run
resumed, and a patch store several times larger than the workers' memory limit.

Every comparison is against an undisturbed run of the same store: all nine mask arrays, ``done``,
the stats (timing columns excepted), ``patches_metadata.csv`` (timing columns excepted) and the two
pickles byte for byte. Mosaics and overlays are off (they are derived from the masks).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from helpers.outputs import assert_same_outputs
from helpers.patch_stores import make_store

from codexdask.config import PatchConfig, SegmentConfig
from codexdask.engine.runner import run
from codexdask.layout import MANIFEST, METADATA_FILE, RESULT_STORE
from codexdask.outputs import load_manifest
from codexdask.segmenters import Segmenter, get_segmenter
from codexdask.store.patch_store import open_patch_store, write_patch_store
from codexdask.synthetic import synthetic_slide

TESTS_DIR = Path(__file__).resolve().parent
N_PATCHES = 10
EMPTY = (2, 5)
N_INFORMATIVE = N_PATCHES - len(EMPTY)
#: One patch per task, so that a crash or a kill lands between patches, not between batches.
RUN_OPTIONS = {"batch_size": 1, "save_mosaics": False, "n_overlays": 0}


# --------------------------------------------------------------------------------------------
# Segmenters that misbehave on purpose (picklable: module-level classes, imported by workers)


class _Wrapped(Segmenter):
    """Watershed with hooks in ``infer``; labels are exactly watershed's."""

    name = "wrapped-watershed"

    def __init__(self, marker_dir: str | Path):
        self.marker_dir = str(marker_dir)
        self.inner = get_segmenter("watershed")

    def postprocess(self, maps):
        return self.inner.postprocess(maps)

    def memory_per_patch(self, shape, image_mpp):
        return self.inner.memory_per_patch(shape, image_mpp)


class CrashOnceSegmenter(_Wrapped):
    """Kills its worker process (``os._exit``) once ``after_done`` patches of ``out_dir`` are done.

    The marker ``crashed`` is created with ``O_EXCL``, so exactly one process crashes, exactly once,
    however the calls are spread over workers; it records how many patches were done at the crash.
    The nanny then starts a new worker process and the scheduler reschedules the lost tasks.
    """

    def __init__(self, marker_dir: str | Path, out_dir: str | Path, after_done: int = 2,
                 sleep: float = 0.2):
        super().__init__(marker_dir)
        self.out_dir = str(out_dir)
        self.after_done = after_done
        self.sleep = sleep

    def infer(self, batch, image_mpp):
        time.sleep(self.sleep)
        done = done_count(Path(self.out_dir))
        if done >= self.after_done:
            crashed = Path(self.marker_dir) / "crashed"
            try:
                fd = os.open(crashed, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(done).encode())
                os.close(fd)
                os._exit(1)  # a hard crash: no cleanup, no exception sent to the scheduler
        return self.inner.infer(batch, image_mpp)


class CountingSegmenter(_Wrapped):
    """Sleeps ``sleep`` seconds per ``infer`` call and records every call (one per patch)."""

    def __init__(self, marker_dir: str | Path, sleep: float = 0.0):
        super().__init__(marker_dir)
        self.sleep = sleep

    def infer(self, batch, image_mpp):
        time.sleep(self.sleep)
        (Path(self.marker_dir) / f"patch-{os.getpid()}-{time.perf_counter_ns()}").touch()
        return self.inner.infer(batch, image_mpp)


class OneCellSegmenter(Segmenter):
    """One square cell with its nucleus per patch: almost no compute, so the bytes dominate."""

    name = "one-cell"

    def infer(self, batch, image_mpp):
        return batch.shape

    def postprocess(self, shape):
        labels = np.zeros(tuple(shape[:3]) + (2,), np.uint32)
        labels[:, 8:24, 8:24, 0] = 1
        labels[:, 12:20, 12:20, 1] = 1
        return labels


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = make_store(tmp_path_factory.mktemp("store") / "slide.zarr", n_patches=N_PATCHES,
                      empty=EMPTY)
    assert len(open_patch_store(path).informative_indices) == N_INFORMATIVE
    return path


@pytest.fixture(scope="module")
def reference(store, client, tmp_path_factory):
    """An undisturbed run."""
    out = tmp_path_factory.mktemp("reference")
    result = run(store, out, SegmentConfig(**RUN_OPTIONS), client=client)
    assert result.n_computed == N_INFORMATIVE
    return out


def done_count(out: Path) -> int:
    try:
        return int(zarr.open_group(str(out / RESULT_STORE), mode="r")["done"][:].sum())
    except (KeyError, FileNotFoundError, ValueError, zarr.errors.GroupNotFoundError):
        return 0  # not created yet


# --------------------------------------------------------------------------------------------
# A worker process dies mid-run


def test_worker_killed_mid_run_gives_identical_outputs(store, client, reference, tmp_path,
                                                       record_property):
    markers = tmp_path / "markers"
    markers.mkdir()
    before = set(client.scheduler_info()["workers"])
    out = tmp_path / "out"
    result = run(store, out, SegmentConfig(**RUN_OPTIONS), client=client,
                 segmenter=CrashOnceSegmenter(markers, out))

    assert (markers / "crashed").exists(), "no worker crashed: the test did not test anything"
    done_at_crash = int((markers / "crashed").read_text())
    record_property("done_at_crash", done_at_crash)
    assert 2 <= done_at_crash < N_INFORMATIVE  # it crashed mid-run
    removed = [msg for _, msg in client.get_events("all")
               if isinstance(msg, dict) and msg.get("action") == "remove-worker"]
    assert removed, "the scheduler never lost a worker"
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the dead one
    assert set(client.scheduler_info()["workers"]) != before
    assert result.n_computed == N_INFORMATIVE
    assert_same_outputs(out, reference, N_INFORMATIVE)


# --------------------------------------------------------------------------------------------
# The driver is killed; the run is resumed

DRIVER = """
import sys
sys.path[:0] = [{tests!r}, {tests_root!r}]  # this module, and tests/ for its helpers
from distributed import Client, LocalCluster
from codexdask.config import SegmentConfig
from codexdask.engine.runner import run
from test_faults import RUN_OPTIONS, CountingSegmenter

if __name__ == "__main__":
    # Threads, not processes: SIGKILL of this one process stops every task at once.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        run({store!r}, {out!r}, SegmentConfig(**RUN_OPTIONS), client=client,
            segmenter=CountingSegmenter({markers!r}, sleep=0.6))
"""


def test_killed_driver_then_resume_recomputes_only_missing(store, client, reference, tmp_path,
                                                          record_property):
    out, markers = tmp_path / "out", tmp_path / "markers-killed"
    markers.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(TESTS_DIR), tests_root=str(TESTS_DIR.parent),
                                    store=str(store), out=str(out), markers=str(markers)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while done_count(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the driver finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    done_before = done_count(out)
    record_property("done_before_kill", done_before)
    assert 3 <= done_before < N_INFORMATIVE
    # Nothing looks complete: no manifest, no summary file, not even a temporary one.
    assert not (out / MANIFEST).exists()
    assert sorted(p.name for p in out.iterdir()) == [RESULT_STORE]
    with pytest.raises(Exception, match="holds no complete run"):
        load_manifest(out)

    resumed_markers = tmp_path / "markers-resumed"
    resumed_markers.mkdir()
    result = run(store, out, SegmentConfig(**RUN_OPTIONS, resume=True), client=client,
                 segmenter=CountingSegmenter(resumed_markers))
    assert result.n_computed == N_INFORMATIVE - done_before
    assert len(list(resumed_markers.iterdir())) == N_INFORMATIVE - done_before
    assert load_manifest(out)["n_computed"] == N_INFORMATIVE - done_before
    assert_same_outputs(out, reference, N_INFORMATIVE)


# --------------------------------------------------------------------------------------------
# A store several times larger than the workers' memory


def big_store(path: Path, n_patches: int, *, size: int = 512, dtype: str = "float64") -> Path:
    """A patch store of ``n_patches`` informative ``size``² patches, built in about a second.

    Four patches are written by ``write_patch_store``; the rest are hard links to their chunk
    files (a store of repeating patches), with the metadata rows and attributes extended to match.
    """
    seed_count = 4
    slide = synthetic_slide(size, size * seed_count, seed=5, empty_fraction=0.0)
    small = path.with_name(path.name + ".seed")
    write_patch_store(slide.image.astype(dtype), small,
                      PatchConfig(nucleus="DAPI", wholecell=slide.membrane_channels,
                                  patch_size=(size, size), overlap=0.0),
                      channel_names=slide.channel_names)
    seed = open_patch_store(small)
    assert seed.metadata["is_informative"].all()
    root = zarr.open_group(str(path), mode="w")
    root.create_array("patches", shape=(n_patches, size, size, 2), chunks=(1, size, size, 2),
                      dtype=seed.patches.dtype, compressors=seed.patches.compressors,
                      fill_value=0)
    for i in range(n_patches):  # one chunk per patch: c/<i>/0/0/0
        target = path / "patches" / "c" / str(i) / "0" / "0"
        target.mkdir(parents=True)
        os.link(small / "patches" / "c" / str(i % seed_count) / "0" / "0" / "0", target / "0")
    meta = seed.metadata.iloc[np.arange(n_patches) % seed_count].reset_index(drop=True)
    meta["patch_id"] = np.arange(n_patches)
    meta["x_start"] = np.arange(n_patches) * size
    meta.to_csv(path / METADATA_FILE, index=False)
    shape = [size, size * n_patches]
    root.attrs["codexdask"] = {**seed.attrs, "n_patches": n_patches, "n_informative": n_patches,
                               "slide_shape": shape, "padded_shape": shape}
    return path


def peak_rss_bytes() -> int:
    """High-water mark of this process's RSS (``VmHWM``; unlike ``ru_maxrss`` it is not inherited
    from the parent that spawned the process)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def test_store_larger_than_worker_memory_completes_without_restarts(tmp_path, record_property):
    # A worker starts near 180-210 MiB (dask, pandas, scipy, numba) and pauses at 80 % of its
    # limit, so 500 MiB leaves room for a task's patches and masks.
    limit, n_workers, n_patches = 500 * 2**20, 2, 500
    store_path = big_store(tmp_path / "big.zarr", n_patches)
    patch_store = open_patch_store(store_path)
    patch_bytes = n_patches * int(np.prod(patch_store.patches.shape[1:])) * 8
    assert patch_bytes >= 2 * n_workers * limit  # >= 4x one worker's limit

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      memory_limit=limit, dashboard_address=":0") as cluster, \
            Client(cluster) as dask_client:
        before = set(dask_client.scheduler_info()["workers"])
        result = run(store_path, tmp_path / "out",
                     SegmentConfig(batch_size=2, save_pickles=False, save_mosaics=False,
                                   n_overlays=0),
                     client=dask_client, segmenter=OneCellSegmenter())
        after = set(dask_client.scheduler_info()["workers"])
        events = dask_client.get_events()
        if sys.platform.startswith("linux"):
            record_property("worker_peak_rss_mib",
                            [v / 2**20 for v in dask_client.run(peak_rss_bytes).values()])

    assert result.n_computed == n_patches
    assert result.metadata["n_cells"].eq(1).all()
    group = zarr.open_group(str(tmp_path / "out" / RESULT_STORE), mode="r")
    assert group["done"][:].all()
    assert after == before, "a worker was restarted"
    messages = [msg for topic in events.values() for _, msg in topic if isinstance(msg, dict)]
    assert not [m for m in messages if m.get("action") == "remove-worker"]
    assert not [m for m in messages if m.get("status") == "paused"], "a worker paused for memory"
