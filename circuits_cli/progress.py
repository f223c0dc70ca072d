"""Progress of long passes, on stderr: a tqdm bar on a terminal, plain lines elsewhere.

In a log file, a pipe or a Slurm job a bar is noise (or, with tqdm's ``disable=None``, nothing at
all for a pass of a minute). There, :class:`Progress` prints one line every
``$CIRCUITS_PROGRESS_SECONDS`` (10 by default) and one at the end::

    activations mixed4c: 1216/5000 img (24%), 31 s, about 97 s left
"""

from __future__ import annotations

import os
import sys
import time

PROGRESS_ENV = "CIRCUITS_PROGRESS_SECONDS"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(PROGRESS_ENV, "10")))
    except ValueError:
        return 10.0


class Progress:
    """``update(n)`` as items finish; ``close()`` at the end (also a context manager)."""

    def __init__(self, total: int, desc: str, unit: str = "img", enabled: bool = True,
                 file=None, initial: int = 0):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.file = file or sys.stderr
        self.n = self.start_n = int(initial)
        self.enabled = enabled
        self.bar = None
        self.started = self.last = time.monotonic()
        self.every = _interval()
        if not enabled:
            return
        isatty = getattr(self.file, "isatty", lambda: False)
        try:
            tty = bool(isatty())
        except ValueError:
            tty = False
        if tty:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit,
                            file=self.file, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every and self.n < self.total:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.started
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        line = f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}, {elapsed:.0f} s"
        done = self.n - self.start_n
        if done > 0 and self.n < self.total and elapsed > 0:
            line += f", about {elapsed * (self.total - self.n) / done:.0f} s left"
        print(line, file=self.file, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.n and time.monotonic() - self.started >= self.every:
            self._line(time.monotonic())
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
