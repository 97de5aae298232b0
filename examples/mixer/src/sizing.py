"""Choose mixer width and depth from the evaluation context.

Parameter count of the model in mixing.py / model.py (linear layers without bias, LayerNorms
with weight and bias, output head tied to the token embedding, no position embedding: the token
mixing weights carry position):

    total(d, L) = V*d                          token embedding (shared with the head)
                + L*(9*d*d + 10*d + T*T + T)   per block: LN 2d, up-projection 6d^2, gate LN 6d,
                                               causal token mixing T^2 + T, down-projection 3d^2
                + 2*d                          final LayerNorm

For each depth L up to ctx.max_layers we take the widest d (a multiple of 8) that fits
ctx.max_parameters, and keep the deepest L whose width is still at least 32*L.
"""

from __future__ import annotations

from dataclasses import dataclass

WIDTH_STEP = 8
MIN_WIDTH_PER_LAYER = 32
EXPANSION = 3  # each gating half is EXPANSION * d wide


@dataclass(frozen=True)
class MixerShape:
    vocab_size: int
    context: int
    depth: int
    width: int

    @property
    def hidden(self) -> int:
        return EXPANSION * self.width


def parameter_count(vocab_size: int, context: int, depth: int, width: int) -> int:
    d, t = width, context
    per_block = 2 * d + 2 * EXPANSION * d * d + 2 * EXPANSION * d + t * t + t + EXPANSION * d * d
    return vocab_size * d + depth * per_block + 2 * d


def widest(vocab_size: int, context: int, depth: int, budget: int) -> int:
    width = 0
    while parameter_count(vocab_size, context, depth, width + WIDTH_STEP) <= budget:
        width += WIDTH_STEP
    return width


def choose_shape(vocab_size: int, context: int, max_layers: int, max_parameters: int) -> MixerShape:
    best: MixerShape | None = None
    for depth in range(1, max_layers + 1):
        width = widest(vocab_size, context, depth, max_parameters)
        if width == 0:
            break
        if best is None or width >= MIN_WIDTH_PER_LAYER * depth:
            best = MixerShape(vocab_size, context, depth, width)
    if best is None:
        raise ValueError(f"a budget of {max_parameters} parameters cannot hold a 1-block mixer")
    return best
