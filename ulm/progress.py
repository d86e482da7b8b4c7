"""Progress of a long stage: a tqdm bar (when enabled) and, always, plain lines on stderr.

``--quiet`` (as the workflow runs every stage) hides the bar, so a stage running for minutes would leave
its log empty; the plain lines, e.g. ``sparsify threshold: 12/48 blocks (25%), 3.1 s elapsed, ~9 s left``,
are written whether or not the bar is shown: one when at least ``step`` (10 %) of the total has been done
AND at least ``min_interval_s`` (5 s) have passed since the last line, and a final one when the work is
done (or the loop ends; not when an error ends it: a failed stage's last word is its one error line). With
the bar shown they go through ``tqdm.write``, which keeps the bar intact.

    for t0 in progress_log(blocks, desc="targets", unit="block", enabled=progress):
        ...
    with progress_log(total=n, desc="bubbles", unit="frame", enabled=progress) as bar:
        bar.update(k)
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{s / 60:.1f} min"


class ProgressLog:
    """A tqdm bar (hidden unless ``enabled``) that also writes throttled plain lines (see the module)."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str,
        unit: str = "it",
        enabled: bool = True,
        step: float = 0.1,
        min_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        file: TextIO | None = None,
    ):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.n = iterable, total, desc, 0
        self._units = unit if unit.endswith("s") else f"{unit}s"
        self._step, self._interval, self._clock, self._file = step, min_interval_s, clock, file
        self._bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=file)
        self._start = self._last_time = clock()
        self._last_n: int | None = None  # the count of the last line written (None: none yet)
        self._lock = threading.Lock()  # dask callbacks may update from worker threads
        self._closed = False

    # ----------------------------------------------------------------------------------- tqdm's API
    def __iter__(self) -> Iterator:
        completed = False
        try:
            for item in self.iterable:
                yield item
                self.update(1)
            completed = True
        finally:
            self.close(final_line=completed)  # a loop left by an error (or a break): the bar closed, no final line

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(final_line=exc[0] is None)  # a stage that failed says so itself, in one line

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            self._bar.update(n)
            if self.n == self._last_n:
                return  # nothing new since the last line (e.g. update(0) after the end)
            now = self._clock()
            if self.total is not None and self.n >= self.total:
                self._line(now, final=True)
            elif now - self._last_time >= self._interval and self._enough_done():
                self._line(now, final=False)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        self._bar.set_postfix(*args, **kwargs)

    def close(self, final_line: bool = True) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if final_line and self._last_n != self.n:  # the final line, unless the last one already said it
                self._line(self._clock(), final=True)
            self._bar.close()

    # ------------------------------------------------------------------------------------- lines
    def _enough_done(self) -> bool:
        if not self.total:
            return True  # unknown total: time alone throttles
        return (self.n - (self._last_n or 0)) >= self._step * self.total

    def _line(self, now: float, final: bool) -> None:
        elapsed = now - self._start
        if self.total is None:
            text = f"{self.desc}: {self.n} {self._units}, {_seconds(elapsed)} elapsed"
        else:
            percent = 100 if self.total == 0 else int(100 * self.n / self.total)
            text = f"{self.desc}: {self.n}/{self.total} {self._units} ({percent}%), {_seconds(elapsed)} elapsed"
            if not final and self.n > 0:
                text += f", ~{_seconds(elapsed * (self.total - self.n) / self.n)} left"
        file = self._file or sys.stderr
        if self._bar.disable:
            print(text, file=file, flush=True)
        else:
            tqdm.write(text, file=file)
            file.flush()
        self._last_n, self._last_time = self.n, now


def progress_log(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    **kwargs: Any,
) -> ProgressLog:
    """Iterate over ``iterable`` (or ``update(n)`` up to ``total``) with a tqdm bar when ``enabled`` and,
    always, plain progress lines on stderr (see the module). ``kwargs``: ``step``, ``min_interval_s``,
    ``clock`` and ``file`` of :class:`ProgressLog`."""
    return ProgressLog(iterable, total=total, desc=desc, unit=unit, enabled=enabled, **kwargs)
