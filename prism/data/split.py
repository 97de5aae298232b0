"""The train / validation / test split: a pure function of the document id.

``bucket = int(sha256(id as UTF-8).hexdigest(), 16) mod 1000``; buckets [0, 50) are validation,
[50, 100) test, [100, 1000) train. Every validator derives the same split from the same ids, in
any order. The held-out shares (5 % each) are fixed constants, not profile settings, so a data
directory serves every profile; 5 % keeps enough held-out text even in the few-MB offline corpus.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
SPLIT_MODULUS = 1000
VAL_BUCKETS = (0, 50)
TEST_BUCKETS = (50, 100)
TRAIN_BUCKETS = (100, 1000)
SPLIT_RULE = (
    f"bucket = int(sha256(id.encode('utf-8')).hexdigest(), 16) % {SPLIT_MODULUS}; "
    f"val: {VAL_BUCKETS[0]} <= bucket < {VAL_BUCKETS[1]}; "
    f"test: {TEST_BUCKETS[0]} <= bucket < {TEST_BUCKETS[1]}; "
    f"train: {TRAIN_BUCKETS[0]} <= bucket < {TRAIN_BUCKETS[1]}"
)


def split_bucket(doc_id: str) -> int:
    return int(hashlib.sha256(doc_id.encode("utf-8")).hexdigest(), 16) % SPLIT_MODULUS


def split_of(doc_id: str) -> Split:
    bucket = split_bucket(doc_id)
    if VAL_BUCKETS[0] <= bucket < VAL_BUCKETS[1]:
        return "val"
    if TEST_BUCKETS[0] <= bucket < TEST_BUCKETS[1]:
        return "test"
    return "train"
