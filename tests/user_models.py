"""User-supplied networks shared by the tests of the compiled step's fallbacks."""

from __future__ import annotations

import torch


class BranchingEncoder(torch.nn.Module):
    """A user encoder whose forward branches on a value: make_fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(784, 8)

    def forward(self, x):
        h = self.linear(x)
        if h.sum() > 0:
            h = -h
        return h[..., :4], h[..., 4:]
