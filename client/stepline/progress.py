"""One status line, rewritten in place on a terminal; silent anywhere else."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")

INTERVAL = 0.1  # seconds between redraws
_EVERY = 1024  # items between clock reads
_CLEAR = "\x1b[K"  # erase to the end of the line


class Progress:
    def __init__(self, stream: IO[str] | None) -> None:
        """``stream`` is written to only if it is a terminal."""
        self._stream = stream if stream is not None and stream.isatty() else None
        self._next = 0.0

    @property
    def active(self) -> bool:
        return self._stream is not None

    def show(self, text: str) -> None:
        """Redraw the line with ``text``, unless it was redrawn less than INTERVAL ago."""
        if self._stream is None:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + INTERVAL
        self._stream.write(f"\r{text}{_CLEAR}")
        self._stream.flush()

    def count(self, items: Iterable[T], text: Callable[[int], str]) -> Iterator[T]:
        """``items`` passed through, showing ``text(n)`` as they go."""
        if self._stream is None:
            yield from items
            return
        for n, item in enumerate(items, 1):
            if n % _EVERY == 0:
                self.show(text(n))
            yield item

    def done(self, text: str | None = None) -> None:
        """End with ``text`` left on its own line, or with the line cleared."""
        if self._stream is None:
            return
        self._stream.write(f"\r{text}{_CLEAR}\n" if text else f"\r{_CLEAR}")
        self._stream.flush()
        self._next = 0.0
