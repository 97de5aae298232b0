"""Choose GPT width and depth from the evaluation context.

Parameter count of the model in layers.py / model.py (no biases in linear layers, LayerNorm with
weight and bias, tied input/output embedding, learned positions):

    total(d, L) = V*d            token embedding (shared with the output head)
                + T*d            position embedding
                + L*(12*d*d + 4*d)   per block: qkv 3d^2, out-proj d^2, MLP 8d^2, two LayerNorms 4d
                + 2*d            final LayerNorm

For each depth L up to ctx.max_layers we take the widest d (a multiple of the head size) with
total(d, L) <= ctx.max_parameters, then keep the deepest L whose width is still at least
MIN_WIDTH_PER_LAYER * L (a GPT-2-like aspect ratio), so small budgets give shallow, wide models.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_WIDTH_PER_LAYER = 32
MAX_DEPTH = 48


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    d_model: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def parameter_count(vocab_size: int, block_size: int, n_layer: int, d_model: int) -> int:
    """Exact parameter count of GPT(config) as built in model.py (tied embeddings counted once)."""
    d = d_model
    return vocab_size * d + block_size * d + n_layer * (12 * d * d + 4 * d) + 2 * d


def head_size_for(d_model: int) -> int:
    """Small models use small heads so they still get several of them."""
    if d_model >= 768:
        return 64
    if d_model >= 256:
        return 32
    return 16


def widest_width(vocab_size: int, block_size: int, n_layer: int, budget: int) -> int:
    """Largest d (a multiple of its head size) whose model fits the budget; 0 if none does."""
    a, b = 12 * n_layer, vocab_size + block_size + 4 * n_layer + 2
    # Solve a*d^2 + b*d <= budget for the real root, then step down to a valid multiple.
    d = int((-b + (b * b + 4 * a * budget) ** 0.5) / (2 * a))
    while d > 0:
        d -= d % head_size_for(d)
        if d > 0 and parameter_count(vocab_size, block_size, n_layer, d) <= budget:
            return d
        d -= 1
    return 0


def choose_config(vocab_size: int, sequence_length: int, max_layers: int, max_parameters: int) -> GPTConfig:
    best: GPTConfig | None = None
    for n_layer in range(1, min(max_layers, MAX_DEPTH) + 1):
        d = widest_width(vocab_size, sequence_length, n_layer, max_parameters)
        if d == 0:
            break
        candidate = GPTConfig(vocab_size, sequence_length, n_layer, d // head_size_for(d), d)
        if best is None or d >= MIN_WIDTH_PER_LAYER * n_layer:
            best = candidate
    if best is None:
        raise ValueError(
            f"a parameter budget of {max_parameters} cannot hold even a 1-layer GPT with "
            f"vocab {vocab_size} and context {sequence_length}"
        )
    return best
