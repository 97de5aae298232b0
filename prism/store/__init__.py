"""Validator state: one SQLite database (WAL mode) plus a content-addressed blob directory.

Layout under the store root (the directory holding the database file)::

    validator.sqlite3                     the database (WAL: -wal / -shm files beside it)
    blobs/<sha256[:2]>/<sha256>.zip       submission ZIPs, written atomically, verified on write

Durability rules:

* every write is one ``BEGIN IMMEDIATE`` transaction, so a crash (even SIGKILL) leaves either
  all of a write or none of it; unique constraints make every write idempotent, so replaying
  it after a crash never duplicates a result;
* the schema carries ``PRAGMA user_version``; ``Store.open`` applies the ordered migrations up
  to ``SCHEMA_VERSION`` (``prism.store.schema``) and refuses a database written by a newer PRISM
  (``store.future_schema``);
* runs left ``running`` by a crash are put back in the queue by ``requeue_interrupted`` (call it
  once at start-up, before any worker claims runs).

The store reads manifests from disk for scoring (``records_for_scoring``); scoring itself never
touches the disk.
"""

from prism.store.core import Store
from prism.store.models import (
    DB_FILENAME,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_STORE_DIR,
    FailureFault,
    RunKey,
    RunQueueState,
    RunRow,
)
from prism.store.schema import MIGRATIONS, SCHEMA_VERSION, migrate

__all__ = [
    "DB_FILENAME",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_STORE_DIR",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "FailureFault",
    "RunKey",
    "RunQueueState",
    "RunRow",
    "Store",
    "migrate",
]
