"""What every part of the store shares: the connection, the clock and one write transaction."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class StoreBase:
    def __init__(self, conn: sqlite3.Connection, root: Path, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self.root = root
        self._clock = clock

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front (no upgrade races)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
