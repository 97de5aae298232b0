"""The near-duplicate rule: a new family close to an earlier one is a version of it (pure).

Families are visited in submission order (``SubmissionRecord.order_key``). A record whose family
is not yet known and whose family ops lie within :func:`prism.identity.near_duplicate_threshold`
edits of a known family's ops (:func:`prism.identity.nearest_family`) is re-labelled with that
family; its measured family is kept as ``measured_family_id``. Otherwise its family becomes known.
Depends only on the records, so every validator merges the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from prism.identity import nearest_family
from prism.scoring.policy import ScoringPolicy
from prism.scoring.records import SubmissionRecord


def merge_near_duplicates(
    records: Sequence[SubmissionRecord], policy: ScoringPolicy
) -> list[SubmissionRecord]:
    if not policy.near_duplicates:
        return list(records)
    known: dict[str, tuple[str, ...]] = {}
    merged: list[SubmissionRecord] = []
    for record in sorted(records, key=lambda r: r.order_key):
        family = record.family_id
        if family is None or record.family_ops is None or family in known:
            merged.append(record)
            continue
        nearest = nearest_family(list(record.family_ops), known)
        if nearest is None:
            known[family] = record.family_ops
            merged.append(record)
        else:
            merged.append(record.model_copy(update={"family_id": nearest, "measured_family_id": family}))
    return merged


__all__ = ["merge_near_duplicates"]
