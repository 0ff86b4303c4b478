"""How long jobs report progress: a small interface, and a bar on stderr for the terminal."""

import sys
from typing import Any, Protocol


class Progress(Protocol):
    """``start`` once with the total, then ``advance`` by what each step did."""

    def start(self, total: int, what: str) -> None: ...
    def advance(self, done: int) -> None: ...


class Bar:
    """A tqdm progress bar on stderr (hidden when ``quiet``); close it when the job ends."""

    def __init__(self, unit: str, quiet: bool = False) -> None:
        self._unit, self._quiet = unit, quiet
        self._bar: Any = None

    def start(self, total: int, what: str) -> None:
        from tqdm import tqdm

        self.close()
        self._bar = tqdm(total=total, unit=self._unit, desc=what, disable=self._quiet, file=sys.stderr)

    def advance(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
