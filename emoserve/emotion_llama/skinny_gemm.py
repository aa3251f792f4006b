"""Faster CPU decoding: the LLM's linear layers computed as ``W @ x.T`` when ``x`` has few rows.

A decode step multiplies every weight matrix by one row per running sequence, so its time is the time to read
the weights once (memory-bound). On CPU, ``F.linear(x, W)`` (``x @ W.T``) with a handful of rows reaches only
about a third of the machine's read bandwidth, while the same product computed as ``torch.mm(W, x.T)`` reads
the weights close to it once ``x`` has at least two rows; with one row torch takes a matrix-vector path
that is as slow as ``F.linear``, so a single row is doubled. On the 2-core machine this project is benchmarked
on, SmolLM2-135M's 211 linear layers take 48 -> 32 ms for 1 row, 80 -> 31 ms for 2, 75 -> 43 ms for 4
(``python -m benchmarks.llm_decode``); from about 8 rows ``F.linear`` is as fast or faster, and prefill (hundreds
of rows, compute-bound) keeps it.

The results equal ``F.linear``'s up to float reassociation (the tests bound the difference); the weights are
the same ``Parameter`` objects, so tied embeddings stay tied and nothing is copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: above this many rows F.linear's GEMM is as fast or faster (measured: 6 rows still win, 8 lose)
MAX_SKINNY_ROWS = 6


def skinny_mm(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``rows @ weight.T`` (``[n, in] x [out, in] -> [n, out]``, contiguous) computed as ``weight @ rows.T``."""
    n = rows.shape[0]
    if n == 1:  # one row takes torch's slow matrix-vector path: two identical rows take the fast one
        rows = torch.cat([rows, rows])
    return torch.mm(weight, rows.t()).t()[:n].contiguous()


class SkinnyGemmLinear(nn.Module):
    """``nn.Linear``'s forward with the small-row product as ``W @ x.T``; same weight and bias objects."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features if x.numel() else 0
        if rows == 0 or rows > MAX_SKINNY_ROWS or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        out = skinny_mm(x.reshape(rows, self.in_features), self.weight)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def use_skinny_gemm(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` inside ``model`` by :class:`SkinnyGemmLinear`, in place; returns how many."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, SkinnyGemmLinear(child))
                replaced += 1
    return replaced
