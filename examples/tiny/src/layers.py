"""Architecture helpers for the TinyBlock example (listed under architecture.files).

The seed's TinyBlock keeps its layers inline in model.py; this module shows where shared layers
of a larger project would live.
"""

import torch


class Residual(torch.nn.Module):
    """y = x + f(x): the wrapper a deeper TinyBlock would stack."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)
