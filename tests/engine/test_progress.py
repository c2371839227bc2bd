"""Progress off a terminal: plain lines, a bounded number of them, and the end of the graph."""

from __future__ import annotations

import io
import time

import pytest

from codexdask.engine import progress


class NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


def _slow(x: int) -> int:
    time.sleep(0.05)
    return x


def _fail(x: int) -> int:
    raise ValueError(f"task {x} failed")


def test_lines_by_percent_and_a_final_one(client, monkeypatch):
    monkeypatch.setattr(progress, "LINE_EVERY_S", 3600.0)
    futures = client.map(_slow, range(40), pure=False)
    total = client.submit(sum, futures)
    stream = NotATerminal()
    progress.show_progress(total, stream)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[-1].startswith("segmentation: 100% done (41 of 41 tasks")
    percents = [int(line.split(": ")[1].split("%")[0]) for line in lines]
    assert percents == sorted(set(percents)) and len(lines) <= 12


def test_a_failing_graph_says_where_it_stopped(client):
    future = client.submit(_fail, 3, pure=False)
    stream = NotATerminal()
    progress.show_progress(future, stream)
    assert stream.getvalue().splitlines()[-1].startswith("segmentation: 0% stopped by an error")
    with pytest.raises(ValueError, match="task 3 failed"):
        future.result()
