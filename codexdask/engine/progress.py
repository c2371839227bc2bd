"""Progress of a running segmentation: a bar on a terminal, plain lines anywhere else.

distributed's text bar redraws itself in place (``\\r``) ten times a second. That suits a terminal;
in a file (a CI log, ``nohup.out``, a SLURM output file) it becomes one line of thousands of
characters. Off a terminal, :func:`show_progress` prints a plain line instead each time another
:data:`LINE_EVERY_PERCENT` of the tasks is done or :data:`LINE_EVERY_S` seconds have passed,
whichever comes first, and a last line when the graph finishes or fails.
"""

from __future__ import annotations

import math
import sys
from typing import Any, TextIO

from distributed import progress as progress_bar
from distributed.diagnostics.progressbar import TextProgressBar

__all__ = ["LINE_EVERY_PERCENT", "LINE_EVERY_S", "LineProgress", "show_progress"]

#: Off a terminal, a line at least every this many percent of the tasks...
LINE_EVERY_PERCENT = 10
#: ... or every this many seconds, whichever comes first.
LINE_EVERY_S = 30.0


class LineProgress(TextProgressBar):
    """distributed's progress feed, written as plain lines for logs.

    Parameters
    ----------
    keys : list
        The futures (or keys) to follow.
    stream : file-like
        Where the lines go.
    label : str
        What is running, the first word of each line.
    """

    def __init__(self, keys: list[Any], *, stream: TextIO, label: str = "segmentation") -> None:
        self.stream = stream
        self.label = label
        self._last_percent = -math.inf
        self._last_time = -math.inf
        # The scheduler's feed sends updates every 100 ms (as for the bar), which also lets it
        # notice the closed feed before the cluster shuts down; lines stay rare by the rule above.
        super().__init__(keys, interval="100ms", complete=True, start=True)

    def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:  # noqa: A002
        """Called by the feed ten times a second; prints when enough has changed."""
        percent = int(100 * (1 - remaining / all)) if all else 100
        elapsed = self.elapsed
        due = (percent >= self._last_percent + LINE_EVERY_PERCENT
               or elapsed >= self._last_time + LINE_EVERY_S)
        if due and percent != self._last_percent:
            self._line(percent, all - remaining, all)

    def _draw_stop(self, remaining: int = 0, all: int = 0, status: str = "", **kwargs: Any) -> None:  # noqa: A002
        """Called once at the end: the 100 % line, or where an error stopped the graph."""
        percent = int(100 * (1 - remaining / all)) if all else 100
        if status == "error":
            self._line(percent, all - remaining, all, "stopped by an error")
        elif percent != self._last_percent:
            self._line(percent, all - remaining, all)

    def _line(self, percent: int, done: int, total: int, what: str = "done") -> None:
        elapsed = self.elapsed
        print(f"{self.label}: {percent}% {what} ({done} of {total} tasks, {elapsed:.1f} s)",
              file=self.stream, flush=True)
        self._last_percent, self._last_time = percent, elapsed


def show_progress(future: Any, stream: TextIO | None = None, label: str = "segmentation") -> None:
    """Follow ``future`` until it finishes: distributed's bar on a terminal, else plain lines.

    Parameters
    ----------
    future : distributed.Future or list of them
        The graph's future (:func:`codexdask.engine.runner.submit`), or several.
    stream : file-like, optional
        Where to write; default standard output. It decides: a terminal gets the bar.
    label : str
        What is running (the first word of each plain line).
    """
    stream = sys.stdout if stream is None else stream
    if stream.isatty():
        progress_bar(future)  # writes to sys.stdout
        print(file=sys.stderr)
    else:
        LineProgress(future if isinstance(future, list) else [future], stream=stream,
                     label=label)
