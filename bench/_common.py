"""Helpers shared by the benchmark scripts: peak-memory sampling and JSON output."""

from __future__ import annotations

import json
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil


@contextmanager
def peak_rss(interval: float = 0.02) -> Iterator[dict[str, int]]:
    """Sample this process's RSS in a thread; ``result["peak"]`` holds the maximum in bytes."""
    process = psutil.Process()
    result = {"peak": process.memory_info().rss}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result["peak"] = max(result["peak"], process.memory_info().rss)
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()


def max_rss_bytes() -> int:
    """Peak RSS of the calling process.

    Reads ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` survives ``execve`` on Linux, so a
    freshly spawned worker would report its parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's result as the last line of stdout."""
    print(json.dumps(result, default=float))
