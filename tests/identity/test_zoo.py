"""Other architectures: canonicalisation handles them and records the same ids every time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

VOCAB, WIDTH = 257, 32


class Zoo(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.embed, self.mix = nn.Embedding(VOCAB, WIDTH), nn.Linear(WIDTH, WIDTH)
        self.conv = nn.Conv1d(WIDTH, WIDTH, 3, padding=2, groups=WIDTH)
        self.router, self.experts = (
            nn.Linear(WIDTH, 4),
            nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(4)),
        )
        self.gru, self.norm = nn.GRU(WIDTH, WIDTH, batch_first=True), nn.BatchNorm1d(WIDTH)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        return getattr(self, self.kind)(x, tokens.shape[1]) @ self.embed.weight.t()

    def convolution(self, x: torch.Tensor, time: int) -> torch.Tensor:
        return x + F.gelu(self.conv(x.transpose(1, 2))[..., :time].transpose(1, 2))

    def fft(self, x: torch.Tensor, time: int) -> torch.Tensor:  # a long convolution via FFT (complex)
        kernel = torch.fft.rfft(self.mix.weight[:time], n=2 * time, dim=0)
        return x + torch.fft.irfft(torch.fft.rfft(x, n=2 * time, dim=1) * kernel, n=2 * time, dim=1)[:, :time]

    def moe(self, x: torch.Tensor, time: int) -> torch.Tensor:  # top-2 routing, data-dependent shapes
        weights = self.router(x).softmax(-1)
        top = weights.topk(2, dim=-1).indices
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            chosen = (top == i).any(-1)
            if chosen.any():
                out[chosen] += expert(x[chosen]) * weights[..., i][chosen].unsqueeze(-1)
        return x + out

    def recurrent(self, x: torch.Tensor, time: int) -> torch.Tensor:
        return self.gru(x)[0]

    def batch_norm(self, x: torch.Tensor, time: int) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)

    def dropout(self, x: torch.Tensor, time: int) -> torch.Tensor:  # random even in eval mode
        return F.dropout(self.mix(x), 0.1, training=True)

    def bfloat16(self, x: torch.Tensor, time: int) -> torch.Tensor:
        return self.mix(x.bfloat16().float()).bfloat16().float()


KINDS = ["convolution", "fft", "moe", "recurrent", "batch_norm", "dropout", "bfloat16"]


@pytest.mark.parametrize("kind", KINDS)
def test_other_architectures_record_deterministically(kind, record):
    first, second = record(Zoo(kind)), record(Zoo(kind))
    assert first.model_dump() == second.model_dump()
    assert first.canonical_ops >= 3 and first.family_ops[0] == "embedding(param,tok)"


def test_they_are_all_different_families(record):
    families = {kind: record(Zoo(kind)).family_id for kind in KINDS}
    assert len(set(families.values())) == len(KINDS), families


def test_a_lossy_cast_is_part_of_the_family(record):
    assert "cast" in record(Zoo("bfloat16")).op_counts
