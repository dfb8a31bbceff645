"""Progress that reads well where it is written: a tqdm bar on a terminal, plain lines elsewhere.

    bar = Progress(n_batches, "epoch 1/4", unit="batch", rate_unit="samples", enabled=progress)
    for batch in ...:
        ...
        bar.update(1, rows=len(batch))
        bar.set_postfix(loss=0.4321)
    bar.close()

On a terminal (the stream is a TTY) it is a tqdm bar. Anywhere else (a log file, CI, a pipe)
it writes one line every :data:`LINE_SECONDS` seconds (``MMCTR_PROGRESS_SECONDS`` overrides)
and never a carriage return::

    epoch 1/4: 42% (840/2000 batch) | 1,234 samples/s | elapsed 1m02s | ETA 1m25s | loss 0.4321

Shared by the trainer, prediction, the embedding stage and the tuner.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

#: seconds between two progress lines when the stream is not a terminal
LINE_SECONDS = 20.0


def line_seconds() -> float:
    try:
        return float(os.environ.get("MMCTR_PROGRESS_SECONDS", LINE_SECONDS))
    except ValueError:
        return LINE_SECONDS


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_seconds(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _fmt_value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def track(iterable: Any, desc: str, total: int | None = None, **kwargs: Any):
    """``for x in track(items, "desc"):`` -- :class:`Progress` over an iterable."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(total, desc, **kwargs) as bar:
        for x in iterable:
            yield x
            bar.update(1)


class Progress:
    """``total`` steps (None: unknown) named ``desc``. ``rate_unit``: what ``update(rows=...)``
    counts for the rate (default: the steps themselves, in ``unit``). ``bar``: force the tqdm
    bar on (True) or off (False); default: on when ``stream`` is a terminal. ``write``: where
    the lines go (default: ``stream``). ``interval``: seconds between lines."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        rate_unit: str | None = None,
        enabled: bool = True,
        initial: int = 0,
        stream: IO[str] | None = None,
        bar: bool | None = None,
        write: Callable[[str], None] | None = None,
        interval: float | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.rate_unit = rate_unit
        self.enabled = enabled
        self.n = self.initial = initial
        self.rows = 0
        self.postfix: dict[str, Any] = {}
        self.stream = stream if stream is not None else sys.stderr
        self.interval = line_seconds() if interval is None else interval
        self._write = write
        self._start = self._last = time.perf_counter()
        self._last_rows = 0
        self.lines = 0  # lines written (line mode)
        self._bar = None
        if enabled and (is_terminal(self.stream) if bar is None else bar):
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, leave=False, file=self.stream
            )

    def update(self, n: int = 1, rows: int = 0) -> None:
        self.n += n
        self.rows += rows
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.perf_counter() - self._last >= self.interval:
            self.emit()

    def set_postfix(self, **values: Any) -> None:
        self.postfix.update(values)
        if self._bar is not None:
            self._bar.set_postfix({k: _fmt_value(v) for k, v in self.postfix.items()})

    def refresh(self) -> None:
        """Write a line now if the interval has passed (for loops that wait, e.g. the tuner)."""
        self.update(0)

    def line(self) -> str:
        now = time.perf_counter()
        elapsed = now - self._start
        parts = [f"{self.desc}:"]
        done = self.n - self.initial
        if self.total:
            parts.append(f"{100.0 * self.n / self.total:.0f}% ({self.n}/{self.total} {self.unit})")
        else:
            parts.append(f"{self.n} {self.unit}")
        fields = []
        dt = now - self._last
        if self.rate_unit and dt > 0 and self.rows > self._last_rows:
            fields.append(f"{(self.rows - self._last_rows) / dt:,.0f} {self.rate_unit}/s")
        elif not self.rate_unit and elapsed > 0 and done > 0:
            fields.append(f"{done / elapsed:,.2f} {self.unit}/s")
        fields.append(f"elapsed {format_seconds(elapsed)}")
        if self.total and done > 0 and self.n < self.total:
            fields.append(f"ETA {format_seconds(elapsed / done * (self.total - self.n))}")
        fields += [f"{k} {_fmt_value(v)}" for k, v in self.postfix.items()]
        return " ".join(parts) + " | " + " | ".join(fields)

    def emit(self) -> None:
        text = self.line()
        self._last, self._last_rows = time.perf_counter(), self.rows
        self.lines += 1
        if self._write is not None:
            self._write(text)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
