"""How many logit rows the host recomputes, so that a lie cannot survive (pure, no torch).

The process commits, for every position, the log-normaliser ``L`` and a digest of its logit row
*before* it sees the targets; after the targets it reports the target logit ``z`` of every
position; only then does the host draw spot positions (fresh OS entropy) and ask for their rows.
A lie is a reported ``z`` (or a committed ``L``) that does not match the committed row.

**Sizing.** Let ``n`` be the positions of a run, ``B`` their UTF-8 bytes, and ``g`` the most a
single lie can lower the counted loss: the host caps each position's loss at
``g = cap_factor * ln V`` nats, so a lie gains at most ``g`` (reported losses are >= 0 because
``z <= L`` is checked everywhere). Lowering the run's bpb by ``delta`` takes
``G = delta * ln 2 * B`` nats, hence at least ``m = ceil(G / g)`` lied positions. With ``k_b``
spots drawn without replacement from batch ``b`` (``n_b`` positions, ``m_b`` of them lied) and
``k_b / n_b`` the same ``S / n`` in every batch, the lie survives with probability

    prod_b C(n_b - m_b, k_b) / C(n_b, k_b)  <=  prod_b (1 - m_b / n_b)^k_b  <=  exp(-S * m / n),

however the lies are spread. So ``S = ceil(n * ln(1 / p) / m)`` spots bound the survival by
``p``. When ``S >= n`` every row is recomputed and nothing can survive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LN2 = math.log(2.0)


@dataclass(frozen=True)
class SpotBudget:
    positions: int
    spots: int  # rows the host recomputes over the run
    min_lies: int  # positions a lie of lie_shift_bpb must touch
    survival_bound: float  # exp(-spots * min_lies / positions); 0 when every row is checked

    @property
    def fraction(self) -> float:
        return self.spots / self.positions if self.positions else 0.0

    @property
    def full(self) -> bool:
        return self.spots >= self.positions

    def per_batch(self, batch_positions: int) -> int:
        """Spots for one batch: the run's fraction, rounded up (at least one)."""
        if self.full:
            return batch_positions
        return min(batch_positions, max(1, math.ceil(self.fraction * batch_positions)))


def spot_budget(
    *, positions: int, total_bytes: int, lie_shift_bpb: float, survival: float, gain_cap_nats: float
) -> SpotBudget:
    """The spots that keep a lie moving bpb by ``lie_shift_bpb`` below ``survival`` (see above)."""
    if positions <= 0:
        return SpotBudget(0, 0, 0, 0.0)
    gain = lie_shift_bpb * LN2 * total_bytes
    min_lies = max(1, math.ceil(gain / gain_cap_nats))
    spots = min(positions, math.ceil(positions * math.log(1.0 / survival) / min_lies))
    bound = 0.0 if spots >= positions else math.exp(-spots * min_lies / positions)
    return SpotBudget(positions=positions, spots=spots, min_lies=min_lies, survival_bound=bound)


__all__ = ["SpotBudget", "spot_budget"]
