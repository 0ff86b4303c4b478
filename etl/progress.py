"""How long jobs report progress: a small interface, and a bar on stderr for the terminal."""

import sys
import time
from typing import Any, Protocol


class Progress(Protocol):
    """``start`` once with the total, then ``advance`` by what each step did."""

    def start(self, total: int, what: str) -> None: ...
    def advance(self, done: int) -> None: ...


class Bar:
    """A tqdm progress bar on stderr (hidden when ``quiet``); close it when the job ends.

    Where stderr is not a terminal (a log, a pipe) a redrawn bar would leave every state behind,
    the last one twice: there the bar prints one line when it closes instead."""

    def __init__(self, unit: str, quiet: bool = False) -> None:
        self._unit, self._quiet = unit, quiet
        self._bar: Any = None
        self._plain: list[Any] | None = None  # [what, total, done, started] off a terminal

    def start(self, total: int, what: str) -> None:
        self.close()
        if self._quiet:
            return
        if not sys.stderr.isatty():
            self._plain = [what, total, 0, time.monotonic()]
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit=self._unit, desc=what, file=sys.stderr)

    def advance(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done)
        elif self._plain is not None:
            self._plain[2] += done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._plain is not None:
            what, total, done, started = self._plain
            print(f"{what}: {done}/{total} {self._unit} in {time.monotonic() - started:.1f}s", file=sys.stderr)
            self._plain = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
