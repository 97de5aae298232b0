"""Training helpers for the TinyBlock example (listed under training.files)."""

import torch.nn.functional as F


def next_token_loss(logits, targets):
    """Mean next-token cross-entropy over (B, T, V) logits and (B, T) targets, in nats."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
