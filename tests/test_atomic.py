"""Atomic writes and stale temporaries (codexdask.atomic)."""


import logging
import os
import subprocess
import sys

import pytest

from codexdask.atomic import remove_stale_temporaries, replace_path, temporary_path
from codexdask.errors import OutputExistsError
from codexdask.outputs import atomic_path


def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path):
    final = tmp_path / "a.txt"
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".a.txt.tmp-")
        tmp.write_text("one")
        assert not final.exists()
    assert final.read_text() == "one"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("two")
        raise RuntimeError("boom")
    assert final.read_text() == "one"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary left


def test_atomic_path_directories(tmp_path):
    final = tmp_path / "d"
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("1")
    assert (final / "x").read_text() == "1"
    with pytest.raises(OutputExistsError), atomic_path(final) as tmp:
        tmp.mkdir()
    assert (final / "x").exists()
    with atomic_path(final, replace_dir=True) as tmp:
        tmp.mkdir()
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_stale_temporaries_go_live_ones_stay(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    final = tmp_path / "result.csv"
    stale = temporary_path(final, pid=dead.pid)
    live = temporary_path(final, pid=os.getpid())
    other = temporary_path(tmp_path / "other.csv", pid=dead.pid)
    for path in (stale, live, other):
        path.write_text("x")
    with caplog.at_level(logging.WARNING, logger="codexdask.atomic"):
        assert remove_stale_temporaries(final) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
    assert f"left by process {dead.pid} which is no longer running" in caplog.text


def test_replace_path_swaps_a_directory_in(tmp_path):
    old, new = tmp_path / "d", tmp_path / "new"
    old.mkdir()
    (old / "a").write_text("old")
    new.mkdir()
    (new / "b").write_text("new")
    replace_path(new, old)
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and (old / "b").read_text() == "new"
