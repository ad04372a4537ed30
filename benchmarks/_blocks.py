"""The transformer block that ``monitor_overhead.py`` and ``scan_throughput.py`` share."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


class Block(nn.Module):
    """Pre-norm transformer block with a functional activation (``F.relu``, ``F.gelu``...)
    in its FFN, so that it is captured as a functional call site.

    ``(N, L, d)`` -> ``(N, L, d)``, or with ``classes`` logits ``(N, classes)`` from a
    linear head on the mean over L.
    """

    def __init__(
        self,
        d: int,
        heads: int,
        ffn: int,
        act: Callable[[Tensor], Tensor],
        classes: int | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)
        self.act = act
        self.head = nn.Linear(d, classes) if classes is not None else None

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, L, d)``."""
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.fc2(self.act(self.fc1(self.norm2(x))))
        return x if self.head is None else self.head(x.mean(1))
