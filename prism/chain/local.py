"""``LocalChain``: the embedded chain PRISM runs on when no subtensor is reachable.

One SQLite file (WAL mode, busy timeout) is shared by every process on the machine: the
``prism chain`` commands, miners and validators all open the same path. The block number is
derived from wall time, ``block = floor((now - genesis_time) / block_time_s)``, so every process
agrees on it without a block producer. What it keeps:

* subnets with their tempo and rate limits (weights, commitments);
* neurons: uid (assigned in registration order), hotkey, coldkey, stake, validator permit, axon;
* commitments with the block they landed in (full history; readers get the latest per hotkey);
* weights per validator with the block they were set in (full history; consensus uses the latest);
* block hashes: ``H(b) = sha256(seed || b || H(b-1))`` from a random seed made with the file,
  computed the first time someone asks for a block that exists and stored, so every process
  sees the same hash and nobody can compute one before its block exists without the file.

Incentive follows ``prism.chain.consensus`` (a simplified Yuma consensus). Writes take an
immediate transaction, so two processes registering at once never get the same uid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prism.chain import consensus
from prism.chain.base import AxonInfo, Commitment, Metagraph, Neuron, SubnetHyperparams, Wallet
from prism.chain.errors import (
    BlockUnavailable,
    ChainUnavailable,
    NotPermitted,
    NotRegistered,
    RateLimited,
    SubnetMissing,
)
from prism.chain.wallets import coldkey_ss58, hotkey_ss58
from prism.errors import OperatorError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_COMMITMENT_BYTES = 128  # the Commitments pallet's Raw field limit on the real chain
GENESIS_PARENT_HASH = "00" * 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subnets (
    netuid INTEGER PRIMARY KEY,
    tempo INTEGER NOT NULL,
    weights_rate_limit INTEGER NOT NULL,
    commitment_rate_limit INTEGER NOT NULL,
    max_uids INTEGER NOT NULL,
    created_block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS neurons (
    netuid INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    hotkey TEXT NOT NULL,
    coldkey TEXT NOT NULL,
    stake REAL NOT NULL,
    validator_permit INTEGER NOT NULL,
    axon_ip TEXT,
    axon_port INTEGER,
    registered_block INTEGER NOT NULL,
    last_update INTEGER,
    PRIMARY KEY (netuid, uid),
    UNIQUE (netuid, hotkey)
);
CREATE TABLE IF NOT EXISTS commitments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    netuid INTEGER NOT NULL,
    hotkey TEXT NOT NULL,
    data TEXT NOT NULL,
    block INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS commitments_by_hotkey ON commitments (netuid, hotkey, id);
CREATE TABLE IF NOT EXISTS weights (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    netuid INTEGER NOT NULL,
    hotkey TEXT NOT NULL,
    uid INTEGER NOT NULL,
    block INTEGER NOT NULL,
    version_key INTEGER NOT NULL,
    weights_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS weights_by_hotkey ON weights (netuid, hotkey, id);
CREATE TABLE IF NOT EXISTS block_hashes (block INTEGER PRIMARY KEY, hash TEXT NOT NULL);
"""


class SubnetParams(BaseModel):
    """Hyperparameters of one local subnet (blocks unless stated)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    netuid: int = Field(ge=0, le=65535)
    tempo: int = Field(default=30, ge=1)
    weights_rate_limit: int = Field(default=10, ge=0)
    commitment_rate_limit: int = Field(default=5, ge=0)
    max_uids: int = Field(default=256, ge=1)


class WeightSet(BaseModel):
    """One validator's weight vector as stored (normalized), with the block it was set in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hotkey: str
    uid: int
    block: int
    version_key: int
    weights: dict[int, float]


def _block_hash(seed: bytes, block: int, parent_hex: str) -> str:
    return hashlib.sha256(seed + block.to_bytes(8, "big") + bytes.fromhex(parent_hex)).hexdigest()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    # WAL lets readers (every validator's metagraph sync) proceed while a writer commits.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class LocalChain:
    """A subnet on the embedded chain stored at ``path``. Implements ``prism.chain.base.Chain``."""

    def __init__(self, path: str | Path, netuid: int, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.netuid = netuid
        self._clock = clock
        if not self.path.exists():
            raise SubnetMissing(
                f"no local chain at {self.path}; create it with `prism chain create --path {self.path} "
                f"--netuid {netuid}`"
            )
        self._lock = threading.RLock()
        try:
            self._conn = _connect(self.path)
            # Files made before block hashes existed get the (empty) table; idempotent.
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS block_hashes (block INTEGER PRIMARY KEY, hash TEXT NOT NULL)"
            )
            meta = {row["key"]: row["value"] for row in self._conn.execute("SELECT key, value FROM meta")}
        except sqlite3.Error as exc:
            raise ChainUnavailable(f"cannot open local chain {self.path}: {exc}") from exc
        if int(meta.get("schema_version", "0")) != SCHEMA_VERSION:
            raise OperatorError(
                f"{self.path} has local chain schema {meta.get('schema_version')!r}, expected {SCHEMA_VERSION}",
                code="chain.schema_mismatch",
            )
        self.genesis_time = float(meta["genesis_time"])
        self.block_time_s = float(meta["block_time_s"])
        self.params = self._load_params()

    # ----------------------------------------------------------------- creation

    @classmethod
    def create(
        cls,
        path: str | Path,
        params: SubnetParams,
        *,
        block_time_s: float = 1.0,
        exist_ok: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> LocalChain:
        """Create the chain file if needed (with its block clock) and the subnet ``params.netuid``.

        ``block_time_s`` only applies when the file is new: the clock of an existing chain
        never changes, or blocks already recorded would move.
        """
        if not (math.isfinite(block_time_s) and block_time_s > 0):
            raise OperatorError(f"block time must be > 0 s, got {block_time_s}", code="chain.bad_config")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(path)
        try:
            # CREATE ... IF NOT EXISTS is idempotent, so racing creators are harmless here.
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            existing = {row["key"]: row["value"] for row in conn.execute("SELECT key, value FROM meta")}
            if not existing:
                for key, value in (
                    ("schema_version", SCHEMA_VERSION),
                    ("genesis_time", repr(clock())),
                    ("block_time_s", repr(block_time_s)),
                    ("block_hash_seed", secrets.token_hex(32)),
                ):
                    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, str(value)))
            elif float(existing["block_time_s"]) != block_time_s:
                logger.warning(
                    "local chain %s keeps its block time %s s (asked for %s s)",
                    path,
                    existing["block_time_s"],
                    block_time_s,
                )
            genesis = float(
                conn.execute("SELECT value FROM meta WHERE key='genesis_time'").fetchone()["value"]
            )
            block_time = float(
                conn.execute("SELECT value FROM meta WHERE key='block_time_s'").fetchone()["value"]
            )
            found = conn.execute("SELECT netuid FROM subnets WHERE netuid=?", (params.netuid,)).fetchone()
            if found and not exist_ok:
                conn.execute("ROLLBACK")
                raise OperatorError(
                    f"subnet {params.netuid} already exists in {path}", code="chain.subnet_exists"
                )
            if not found:
                created = int((clock() - genesis) // block_time)
                conn.execute(
                    "INSERT INTO subnets (netuid, tempo, weights_rate_limit, commitment_rate_limit, max_uids,"
                    " created_block) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        params.netuid,
                        params.tempo,
                        params.weights_rate_limit,
                        params.commitment_rate_limit,
                        params.max_uids,
                        created,
                    ),
                )
            conn.execute("COMMIT")
        finally:
            conn.close()
        return cls(path, params.netuid, clock=clock)

    def _load_params(self) -> SubnetParams:
        row = self._conn.execute("SELECT * FROM subnets WHERE netuid=?", (self.netuid,)).fetchone()
        if row is None:
            raise SubnetMissing(
                f"subnet {self.netuid} does not exist in {self.path}; create it with "
                f"`prism chain create --path {self.path} --netuid {self.netuid}`"
            )
        return SubnetParams(
            netuid=row["netuid"],
            tempo=row["tempo"],
            weights_rate_limit=row["weights_rate_limit"],
            commitment_rate_limit=row["commitment_rate_limit"],
            max_uids=row["max_uids"],
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction: read-check-write is atomic across processes."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise ChainUnavailable(f"local chain {self.path} is locked or unreadable: {exc}") from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise ChainUnavailable(f"local chain {self.path} write failed: {exc}") from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def __enter__(self) -> LocalChain:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise ChainUnavailable(f"local chain {self.path} read failed: {exc}") from exc

    # ----------------------------------------------------------------- clock

    def block(self) -> int:
        return max(0, int((self._clock() - self.genesis_time) // self.block_time_s))

    def wait_for_block(self, block: int, *, timeout_s: float = 60.0) -> int:
        """Sleep until ``block`` is reached (tests and localnet use this to skip rate limits)."""
        deadline = time.monotonic() + timeout_s
        while (current := self.block()) < block:
            if time.monotonic() > deadline:
                raise TimeoutError(f"block {block} not reached in {timeout_s} s (at {current})")
            time.sleep(min(self.block_time_s / 4, 0.25))
        return current

    def block_hash(self, block: int) -> str:
        """``0x`` + sha256 hex of (seed, block, parent hash); the block must exist (``<= block()``)."""
        current = self.block()
        if not 0 <= block <= current:
            raise BlockUnavailable(f"block {block} does not exist yet on {self.path} (at block {current})")
        rows = self._read("SELECT hash FROM block_hashes WHERE block=?", (block,))
        if rows:
            return "0x" + rows[0]["hash"]
        with self._write() as conn:
            seed = self._hash_seed(conn)
            last = conn.execute("SELECT block, hash FROM block_hashes ORDER BY block DESC LIMIT 1").fetchone()
            start, parent = (int(last["block"]) + 1, last["hash"]) if last else (0, GENESIS_PARENT_HASH)
            for number in range(start, block + 1):
                parent = _block_hash(seed, number, parent)
                conn.execute("INSERT INTO block_hashes (block, hash) VALUES (?, ?)", (number, parent))
            row = conn.execute("SELECT hash FROM block_hashes WHERE block=?", (block,)).fetchone()
        return "0x" + row["hash"]

    @staticmethod
    def _hash_seed(conn: sqlite3.Connection) -> bytes:
        """The chain's secret seed; a file made before block hashes existed gets one now."""
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('block_hash_seed', ?)", (secrets.token_hex(32),)
        )
        return bytes.fromhex(
            conn.execute("SELECT value FROM meta WHERE key='block_hash_seed'").fetchone()["value"]
        )

    def tempo(self) -> int:
        return self.params.tempo

    def weights_rate_limit(self) -> int:
        return self.params.weights_rate_limit

    def commitment_rate_limit(self) -> int:
        return self.params.commitment_rate_limit

    # ----------------------------------------------------------------- registration and stake

    def register(
        self, hotkey: str, coldkey: str, *, stake: float = 0.0, validator_permit: bool = False
    ) -> int:
        """Register ``hotkey`` (or update an existing registration's stake and permit); returns its uid."""
        if not (math.isfinite(stake) and stake >= 0):
            raise OperatorError(f"stake must be a finite number >= 0, got {stake}", code="chain.bad_stake")
        with self._write() as conn:
            row = conn.execute(
                "SELECT uid, coldkey FROM neurons WHERE netuid=? AND hotkey=?", (self.netuid, hotkey)
            ).fetchone()
            if row is not None:
                if row["coldkey"] != coldkey:
                    raise OperatorError(
                        f"hotkey {hotkey} is already registered under coldkey {row['coldkey']}",
                        code="chain.hotkey_owned",
                    )
                conn.execute(
                    "UPDATE neurons SET stake=?, validator_permit=? WHERE netuid=? AND uid=?",
                    (stake, int(validator_permit), self.netuid, row["uid"]),
                )
                return int(row["uid"])
            count = conn.execute(
                "SELECT COUNT(*) AS n FROM neurons WHERE netuid=?", (self.netuid,)
            ).fetchone()["n"]
            if count >= self.params.max_uids:
                raise OperatorError(
                    f"subnet {self.netuid} is full ({self.params.max_uids} uids)", code="chain.subnet_full"
                )
            uid = int(count)
            conn.execute(
                "INSERT INTO neurons (netuid, uid, hotkey, coldkey, stake, validator_permit, registered_block)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.netuid, uid, hotkey, coldkey, stake, int(validator_permit), self.block()),
            )
        logger.info("registered %s as uid %d on local subnet %d", hotkey, uid, self.netuid)
        return uid

    def register_wallet(self, wallet: Wallet, *, stake: float = 0.0, validator_permit: bool = False) -> int:
        return self.register(
            hotkey_ss58(wallet), coldkey_ss58(wallet), stake=stake, validator_permit=validator_permit
        )

    def add_stake(self, hotkey: str, amount: float) -> float:
        """Add (or, negative, remove) stake; returns the new stake."""
        if not math.isfinite(amount):
            raise OperatorError(f"stake amount must be finite, got {amount}", code="chain.bad_stake")
        with self._write() as conn:
            row = self._neuron_row(conn, hotkey)
            new_stake = max(0.0, float(row["stake"]) + amount)
            conn.execute(
                "UPDATE neurons SET stake=? WHERE netuid=? AND uid=?", (new_stake, self.netuid, row["uid"])
            )
        return new_stake

    def _neuron_row(self, conn: sqlite3.Connection, hotkey: str) -> sqlite3.Row:
        row = conn.execute(
            "SELECT * FROM neurons WHERE netuid=? AND hotkey=?", (self.netuid, hotkey)
        ).fetchone()
        if row is None:
            raise NotRegistered(
                f"hotkey {hotkey} is not registered on local subnet {self.netuid} ({self.path}); "
                "register it with `prism chain register`"
            )
        return row

    # ----------------------------------------------------------------- reads

    def metagraph(self) -> Metagraph:
        block = self.block()
        rows = self._read("SELECT * FROM neurons WHERE netuid=? ORDER BY uid", (self.netuid,))
        neurons = [
            Neuron(
                uid=row["uid"],
                hotkey=row["hotkey"],
                coldkey=row["coldkey"],
                stake=row["stake"],
                validator_permit=bool(row["validator_permit"]),
                axon=AxonInfo(ip=row["axon_ip"], port=row["axon_port"]) if row["axon_ip"] else None,
                last_update=row["last_update"],
            )
            for row in rows
        ]
        return Metagraph(netuid=self.netuid, block=block, neurons=neurons, hyperparams=self.hyperparams())

    def hyperparams(self) -> SubnetHyperparams:
        """The local subnet has no version key, commit-reveal or minimum weight count."""
        return SubnetHyperparams(tempo=self.params.tempo, weights_rate_limit=self.params.weights_rate_limit)

    def commitments(self) -> dict[str, Commitment]:
        rows = self._read(
            "SELECT hotkey, data, block FROM commitments WHERE id IN "
            "(SELECT MAX(id) FROM commitments WHERE netuid=? GROUP BY hotkey)",
            (self.netuid,),
        )
        return {
            row["hotkey"]: Commitment(hotkey=row["hotkey"], data=row["data"], block=row["block"])
            for row in rows
        }

    def commitment_history(self, hotkey: str | None = None) -> list[Commitment]:
        """Every commitment ever made on the subnet (oldest first), optionally for one hotkey."""
        sql = "SELECT hotkey, data, block FROM commitments WHERE netuid=?"
        args: tuple[Any, ...] = (self.netuid,)
        if hotkey is not None:
            sql += " AND hotkey=?"
            args += (hotkey,)
        return [
            Commitment(hotkey=r["hotkey"], data=r["data"], block=r["block"])
            for r in self._read(sql + " ORDER BY id", args)
        ]

    def weights(self) -> dict[str, WeightSet]:
        """The latest weight set of every validator hotkey."""
        rows = self._read(
            "SELECT * FROM weights WHERE id IN (SELECT MAX(id) FROM weights WHERE netuid=? GROUP BY hotkey)",
            (self.netuid,),
        )
        return {
            row["hotkey"]: WeightSet(
                hotkey=row["hotkey"],
                uid=row["uid"],
                block=row["block"],
                version_key=row["version_key"],
                weights={int(k): float(v) for k, v in json.loads(row["weights_json"]).items()},
            )
            for row in rows
        }

    def blocks_since_last_update(self, hotkey: str) -> int | None:
        rows = self._read(
            "SELECT last_update FROM neurons WHERE netuid=? AND hotkey=?", (self.netuid, hotkey)
        )
        if not rows or rows[0]["last_update"] is None:
            return None
        return self.block() - int(rows[0]["last_update"])

    def incentives(self) -> dict[int, float]:
        graph = self.metagraph()
        by_hotkey = graph.by_hotkey()
        weights_by_uid: dict[int, dict[int, float]] = {}
        stakes: dict[int, float] = {}
        for hotkey, weight_set in self.weights().items():
            neuron = by_hotkey.get(hotkey)
            # Weights of a hotkey that lost its permit (or its registration) no longer count.
            if neuron is None or not neuron.validator_permit:
                continue
            weights_by_uid[neuron.uid] = weight_set.weights
            stakes[neuron.uid] = neuron.stake
        result = {n.uid: 0.0 for n in graph.neurons}
        result.update(
            {
                uid: value
                for uid, value in consensus.incentives(weights_by_uid, stakes).items()
                if uid in result
            }
        )
        return result

    # ----------------------------------------------------------------- writes (signed by a wallet)

    def commit(self, wallet: Wallet, data: str) -> int:
        if len(data.encode("utf-8")) > MAX_COMMITMENT_BYTES:
            raise OperatorError(
                f"commitment is {len(data.encode())} bytes; the limit is {MAX_COMMITMENT_BYTES}",
                code="chain.commitment_too_large",
            )
        hotkey = hotkey_ss58(wallet)
        with self._write() as conn:
            self._neuron_row(conn, hotkey)
            block = self.block()
            last = conn.execute(
                "SELECT block FROM commitments WHERE netuid=? AND hotkey=? ORDER BY id DESC LIMIT 1",
                (self.netuid, hotkey),
            ).fetchone()
            limit = self.params.commitment_rate_limit
            if last is not None and block - int(last["block"]) < limit:
                wait = int(last["block"]) + limit - block
                raise RateLimited(
                    f"commitment rate limit: last commitment at block {last['block']}, "
                    f"limit {limit} blocks, retry in {wait} blocks",
                    retry_after_blocks=wait,
                )
            conn.execute(
                "INSERT INTO commitments (netuid, hotkey, data, block) VALUES (?, ?, ?, ?)",
                (self.netuid, hotkey, data, block),
            )
        logger.info("commitment by %s at block %d: %s", hotkey, block, data)
        return block

    def serve_axon(self, wallet: Wallet, ip: str, port: int) -> None:
        endpoint = AxonInfo(ip=ip, port=port)  # validates the address and port before anything is written
        hotkey = hotkey_ss58(wallet)
        with self._write() as conn:
            row = self._neuron_row(conn, hotkey)
            conn.execute(
                "UPDATE neurons SET axon_ip=?, axon_port=? WHERE netuid=? AND uid=?",
                (endpoint.ip, endpoint.port, self.netuid, row["uid"]),
            )
        logger.info("axon of %s published at %s", hotkey, endpoint.url)

    def set_weights(self, wallet: Wallet, weights: dict[int, float], version_key: int) -> int:
        hotkey = hotkey_ss58(wallet)
        try:
            normalized = consensus.normalize({int(uid): float(w) for uid, w in weights.items()})
        except ValueError as exc:
            raise OperatorError(str(exc), code="chain.bad_weights") from exc
        with self._write() as conn:
            row = self._neuron_row(conn, hotkey)
            if not row["validator_permit"]:
                raise NotPermitted(f"hotkey {hotkey} (uid {row['uid']}) has no validator permit")
            known = {r["uid"] for r in conn.execute("SELECT uid FROM neurons WHERE netuid=?", (self.netuid,))}
            unknown = sorted(set(normalized) - known)
            if unknown:
                raise OperatorError(f"weights for unregistered uids {unknown}", code="chain.bad_weights")
            block = self.block()
            limit = self.params.weights_rate_limit
            if row["last_update"] is not None and block - int(row["last_update"]) < limit:
                wait = int(row["last_update"]) + limit - block
                raise RateLimited(
                    f"weights rate limit: last set at block {row['last_update']}, limit {limit} blocks, "
                    f"retry in {wait} blocks",
                    retry_after_blocks=wait,
                )
            conn.execute(
                "INSERT INTO weights (netuid, hotkey, uid, block, version_key, weights_json) VALUES (?, ?, ?, ?, ?, ?)",
                (self.netuid, hotkey, row["uid"], block, version_key, json.dumps(normalized, sort_keys=True)),
            )
            conn.execute(
                "UPDATE neurons SET last_update=? WHERE netuid=? AND uid=?", (block, self.netuid, row["uid"])
            )
        logger.info("weights set by %s at block %d: %s", hotkey, block, normalized)
        return block

    # ----------------------------------------------------------------- inspection

    def state(self) -> dict[str, Any]:
        """Everything about the subnet as plain JSON-able data (``prism chain show --json``)."""
        incentives = self.incentives()
        graph = self.metagraph()
        return {
            "path": str(self.path),
            "netuid": self.netuid,
            "block": graph.block,
            "block_time_s": self.block_time_s,
            "params": self.params.model_dump(),
            "neurons": [{**n.model_dump(), "incentive": incentives.get(n.uid, 0.0)} for n in graph.neurons],
            "commitments": {h: c.model_dump() for h, c in self.commitments().items()},
            "weights": {h: w.model_dump() for h, w in self.weights().items()},
        }
