"""Atomic writes: a file or directory appears under its final name complete, or not at all.

Everything is written to a temporary sibling ``.NAME.tmp-<pid>`` and renamed at the end. A
process killed half-way leaves only that temporary behind; the next write to the same ``NAME``
removes the temporaries of processes that no longer run (never one of a running process) and
logs each removal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import psutil

from codexdask.errors import OutputExistsError

__all__ = ["atomic_path", "remove_stale_temporaries", "replace_path", "temporary_path"]

logger = logging.getLogger(__name__)


def temporary_path(final: str | os.PathLike[str], pid: int | None = None) -> Path:
    """The temporary sibling ``.NAME.tmp-<pid>`` that :func:`atomic_path` writes ``final`` to.

    Examples
    --------
    >>> temporary_path("out/slide.zarr", pid=42).as_posix()
    'out/.slide.zarr.tmp-42'
    """
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid() if pid is None else int(pid)}")


def remove(path: Path) -> None:
    """Delete a file, a link or a directory tree; nothing if ``path`` does not exist."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_stale_temporaries(final: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries of ``final`` left by processes that are no longer running.

    Looks for ``.NAME.tmp-<pid>`` (and ``NAME.tmp-<pid>``, the name patch stores were written
    under before 0.1.0) beside ``final``. A temporary whose process is alive is left alone: it
    may be a write in progress. The process id is checked on this machine only; on storage shared
    between machines, do not write the same ``NAME`` from two of them at once.

    Returns
    -------
    list of Path
        The temporaries removed (each is also logged at WARNING level).
    """
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = re.compile(rf"\.?{re.escape(final.name)}\.tmp-(\d+)")
    removed = []
    for path in sorted(final.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if match is None or psutil.pid_exists(int(match.group(1))):
            continue
        remove(path)
        logger.warning("removed %s, left by process %s which is no longer running",
                       path, match.group(1))
        removed.append(path)
    return removed


def replace_path(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``, replacing what is there.

    A file replaces a file in one atomic ``os.replace``. A directory cannot replace an existing
    one that way, so the existing ``final`` is first renamed aside (``.NAME.old-<pid>``) and
    deleted after: a crash in between loses neither the old nor the new result.
    """
    if not (tmp.is_dir() and (final.exists() or final.is_symlink())) and not final.is_dir():
        os.replace(tmp, final)
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    remove(old)
    final.rename(old)
    os.replace(tmp, final)
    remove(old)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], *, replace_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it to ``final`` when the block succeeds.

    Parameters
    ----------
    final : path
        Where the file or directory must end up.
    replace_dir : bool
        When the caller wrote a directory and ``final`` already exists, replace ``final``.
        Without it an existing directory target raises :class:`OutputExistsError`. Files are
        always replaced.

    Yields
    ------
    Path
        :func:`temporary_path` of ``final`` (nothing there yet). Write a file or a directory to
        it. On an exception it is deleted and the exception propagates; if the block writes
        nothing, nothing is renamed. Stale temporaries of ``final`` are removed first
        (:func:`remove_stale_temporaries`).
    """
    final = Path(final)
    remove_stale_temporaries(final)
    tmp = temporary_path(final)
    remove(tmp)
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    if not (tmp.exists() or tmp.is_symlink()):
        return
    if tmp.is_dir() and final.exists() and not replace_dir:
        remove(tmp)
        raise OutputExistsError(f"{final} already exists; remove it or rerun with --overwrite")
    replace_path(tmp, final)
