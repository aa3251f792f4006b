"""Faster CPU decoding: the LLM's linear layers computed as ``W @ x.T`` when ``x`` has few rows.

A decode step multiplies every weight matrix by one row per running sequence, so its time is the time to read
the weights once (memory-bound). On CPU, ``F.linear(x, W)`` (``x @ W.T``) with a handful of rows reaches only
about a third of the machine's read bandwidth, while the same product computed as ``torch.mm(W, x.T)`` reads
the weights close to it once ``x`` has at least two rows; with one row torch takes a matrix-vector path
that is as slow as ``F.linear``, so a single row is doubled. Measured on this project's 2-core machine for
SmolLM2-135M (all 211 linear layers, ``python -m benchmarks.llm_decode``): 1 row 45 -> 18 ms, 4 rows
66 -> 24 ms. Prefill (hundreds of rows, compute-bound) keeps ``F.linear``.

The results equal ``F.linear``'s up to float reassociation (the tests bound the difference); the weights are
the same ``Parameter`` objects, so tied embeddings stay tied and nothing is copied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: above this many rows the product is compute-bound and F.linear's GEMM is as fast or faster
MAX_SKINNY_ROWS = 16


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
        flat = x.reshape(rows, self.in_features)
        if rows == 1:  # one row takes torch's slow matrix-vector path: two identical rows take the fast one
            flat = torch.cat([flat, flat])
        out = torch.mm(self.weight, flat.t()).t()[:rows].contiguous()
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
