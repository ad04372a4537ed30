"""Shared test models with dead units *by construction*, and their data.

Every model here carries ``expected_dead: dict[str, list[int]]``: the call-site name (as
:mod:`deadrelu.capture` names it) -> the exact unit indices that are dead on the data of
:func:`batches` (or the model's own ``make_batches``). Ground truth comes from the
construction, not from running the model:

* dead units have pre-activations far below 0 (bias -1000, or all-negative weights on
  non-negative inputs with bias 0);
* every other unit is *always* active: its weights are bounded so that |w . x| <= 1 on
  the data's input range, and its bias is +1.5, so z >= 0.5 > 0 at every position.

So on these models dead == dormant (ReDo, any tau < 0.2) == rarely active, and every alive
unit has active fraction 1. Import from tests as ``from models import DeadMLP, batches``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ALIVE_BIAS",
    "DEAD_BIAS",
    "DeadChannelCNN",
    "DeadMLP",
    "DictInputModel",
    "FirstLayerNegativeWeights",
    "InplaceReLUModel",
    "ReusedReLUModel",
    "TinyTransformerBlock",
    "all_models",
    "batches",
    "bounded_linear",
]

DEAD_BIAS = -1000.0
ALIVE_BIAS = 1.5


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def bounded_linear(
    in_features: int,
    out_features: int,
    *,
    input_bound: float,
    dead: Sequence[int] = (),
    seed: int = 0,
) -> nn.Linear:
    """A Linear whose alive units have z >= 0.5 for inputs with |x_i| <= ``input_bound``.

    Weights are uniform in ``[-1, 1] / (in_features * input_bound)`` so |w . x| <= 1; alive
    biases are :data:`ALIVE_BIAS`, the ``dead`` units' biases :data:`DEAD_BIAS`.
    """
    layer = nn.Linear(in_features, out_features)
    scale = 1.0 / (in_features * input_bound)
    w = torch.rand(out_features, in_features, generator=_generator(seed)) * 2 - 1
    layer.weight.copy_(w * scale)
    layer.bias.fill_(ALIVE_BIAS)
    for j in dead:
        layer.bias[j] = DEAD_BIAS
    return layer


def batches(
    shape: Sequence[int], n: int = 4, *, low: float = -1.0, high: float = 1.0, seed: int = 0
) -> list[Tensor]:
    """``n`` float32 tensors of ``shape``, uniform in ``[low, high]``, reproducible."""
    g = _generator(seed)
    return [torch.rand(*shape, generator=g) * (high - low) + low for _ in range(n)]


class DeadMLP(nn.Sequential):
    """in -> fc1 -> relu1 -> fc2 -> relu2 -> head, on inputs in [-1, 1]^in.

    Units ``dead1`` of relu1 and ``dead2`` of relu2 have bias -1000.
    """

    def __init__(
        self,
        in_features: int = 8,
        hidden: tuple[int, int] = (16, 12),
        out_features: int = 3,
        dead1: Sequence[int] = (1, 4),
        dead2: Sequence[int] = (7,),
    ) -> None:
        h1, h2 = hidden
        super().__init__(
            OrderedDict(
                fc1=bounded_linear(in_features, h1, input_bound=1.0, dead=dead1, seed=1),
                relu1=nn.ReLU(),
                fc2=bounded_linear(h1, h2, input_bound=ALIVE_BIAS + 1, dead=dead2, seed=2),
                relu2=nn.ReLU(),
                head=nn.Linear(h2, out_features),
            )
        )
        self.in_features = in_features
        self.expected_dead: dict[str, list[int]] = {
            "relu1": sorted(dead1),
            "relu2": sorted(dead2),
        }

    def make_batches(self, n: int = 4, batch: int = 32, seed: int = 0) -> list[Tensor]:
        """Inputs ``(batch, in_features)`` in [-1, 1]."""
        return batches((batch, self.in_features), n, seed=seed)


class FirstLayerNegativeWeights(nn.Module):
    """One first-layer unit has all-negative weights and bias 0, the inputs are >= 0.

    z_j = w_j . x <= 0 for every x >= 0, so unit ``dead`` never fires (z = 0 at x = 0 is
    not > 0 either); the other units are bounded-alive.
    """

    def __init__(self, in_features: int = 6, hidden: int = 10, dead: int = 3) -> None:
        super().__init__()
        self.fc = bounded_linear(in_features, hidden, input_bound=1.0, seed=3)
        with torch.no_grad():
            self.fc.weight[dead] = -torch.linspace(0.1, 1.0, in_features)
            self.fc.bias[dead] = 0.0
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 2)
        self.in_features = in_features
        self.expected_dead = {"act": [dead]}

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, in_features)`` with entries >= 0."""
        return self.head(self.act(self.fc(x)))

    def make_batches(self, n: int = 4, batch: int = 32, seed: int = 0) -> list[Tensor]:
        """Inputs ``(batch, in_features)`` in [0, 1]."""
        return batches((batch, self.in_features), n, low=0.0, high=1.0, seed=seed)


class DeadChannelCNN(nn.Module):
    """conv1 -> bn1 -> relu1 -> conv2 -> bn2 -> relu2 -> pool -> head, for eval mode.

    BatchNorm in eval mode with running mean 0 and variance 1 is the affine map
    ``weight * z + bias``. ``weight`` is chosen so ``|weight * conv(x)| <= 1`` on inputs in
    [-1, 1]; alive channels get bias +1.5, the killed ones -1000. Unit dim 1 (channels).
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, int] = (6, 5),
        dead1: Sequence[int] = (2,),
        dead2: Sequence[int] = (0, 4),
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c2, 2)
        self.in_channels = in_channels
        bound1 = _conv_bound(self.conv1, input_bound=1.0)
        bound2 = _conv_bound(self.conv2, input_bound=ALIVE_BIAS + 1)
        for bn, bound, dead in ((self.bn1, bound1, dead1), (self.bn2, bound2, dead2)):
            with torch.no_grad():
                bn.weight.fill_(1.0 / bound)
                bn.bias.fill_(ALIVE_BIAS)
                for j in dead:
                    bn.bias[j] = DEAD_BIAS
        self.eval()
        self.expected_dead = {"relu1": sorted(dead1), "relu2": sorted(dead2)}

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, C, H, W)`` in [-1, 1]."""
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.head(self.pool(x).flatten(1))

    def make_batches(self, n: int = 4, batch: int = 8, seed: int = 0) -> list[Tensor]:
        """Inputs ``(batch, in_channels, 8, 8)`` in [-1, 1]."""
        return batches((batch, self.in_channels, 8, 8), n, seed=seed)


def _conv_bound(conv: nn.Conv2d, input_bound: float) -> float:
    """An upper bound of |conv(x)| for |x| <= input_bound: max_c sum |w_c| * bound + |b_c|."""
    w = conv.weight.detach().abs().flatten(1).sum(1) * input_bound
    b = conv.bias.detach().abs() if conv.bias is not None else torch.zeros_like(w)
    return float((w + b).max()) + 1e-6


class _FFN(nn.Module):
    """Gated FFN with functional activations: down(relu(up(x)) * gelu(gate(x)))."""

    def __init__(self, dim: int, hidden: int, dead_relu: Sequence[int], dead_gelu: Sequence[int]):
        super().__init__()
        # LayerNorm output (no affine) has |x_i| <= sqrt(dim - 1).
        bound = math.sqrt(dim)
        self.up = bounded_linear(dim, hidden, input_bound=bound, dead=dead_relu, seed=4)
        self.gate = bounded_linear(dim, hidden, input_bound=bound, dead=dead_gelu, seed=5)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, L, dim)`` -> ``(N, L, dim)``."""
        return self.down(F.relu(self.up(x)) * F.gelu(self.gate(x)))


class TinyTransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then + ffn(norm2(x)); inputs ``(N, L, dim)``.

    The FFN calls ``F.relu`` and ``F.gelu`` (functional sites ``"ffn:relu"`` and
    ``"ffn:gelu"``, unit dim -1); ``dead_relu`` / ``dead_gelu`` features have bias -1000.
    The killed GELU features are also *saturated* (GELU'(-1000) = 0).
    """

    def __init__(
        self,
        dim: int = 8,
        hidden: int = 16,
        heads: int = 2,
        dead_relu: Sequence[int] = (5,),
        dead_gelu: Sequence[int] = (2, 11),
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.ffn = _FFN(dim, hidden, dead_relu, dead_gelu)
        self.dim = dim
        self.expected_dead = {"ffn:relu": sorted(dead_relu), "ffn:gelu": sorted(dead_gelu)}

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, L, dim)`` -> ``(N, L, dim)``."""
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ffn(self.norm2(x))

    def make_batches(self, n: int = 4, batch: int = 4, seed: int = 0) -> list[Tensor]:
        """Inputs ``(batch, 5, dim)`` in [-1, 1]."""
        return batches((batch, 5, self.dim), n, seed=seed)


class ReusedReLUModel(nn.Module):
    """One ``nn.ReLU`` instance ``act`` used twice: sites ``"act"`` (8 units) and ``"act#1"``
    (6 units), with units ``dead1`` and ``dead2`` killed."""

    def __init__(self, dead1: Sequence[int] = (0,), dead2: Sequence[int] = (3, 5)) -> None:
        super().__init__()
        self.fc1 = bounded_linear(4, 8, input_bound=1.0, dead=dead1, seed=6)
        self.fc2 = bounded_linear(8, 6, input_bound=ALIVE_BIAS + 1, dead=dead2, seed=7)
        self.act = nn.ReLU()
        self.expected_dead = {"act": sorted(dead1), "act#1": sorted(dead2)}

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, 4)`` in [-1, 1] -> ``(N, 6)``."""
        return self.act(self.fc2(self.act(self.fc1(x))))

    def make_batches(self, n: int = 4, batch: int = 16, seed: int = 0) -> list[Tensor]:
        """Inputs ``(batch, 4)`` in [-1, 1]."""
        return batches((batch, 4), n, seed=seed)


class InplaceReLUModel(nn.Sequential):
    """fc -> ReLU(inplace=True) -> head; unit ``dead`` of ``"act"`` has bias -1000.

    Its pre-activation is about -1000: a capture that read z after the in-place ReLU would
    see 0 instead (the test checks ``z_min``).
    """

    def __init__(self, dead: Sequence[int] = (2,)) -> None:
        super().__init__(
            OrderedDict(
                fc=bounded_linear(5, 7, input_bound=1.0, dead=dead, seed=8),
                act=nn.ReLU(inplace=True),
                head=nn.Linear(7, 2),
            )
        )
        self.expected_dead = {"act": sorted(dead)}

    def make_batches(self, n: int = 4, batch: int = 16, seed: int = 0) -> list[Tensor]:
        """Inputs ``(batch, 5)`` in [-1, 1]."""
        return batches((batch, 5), n, seed=seed)


class DictInputModel(nn.Module):
    """Takes keyword arguments like a Hugging Face model: ``model(features=x, labels=y)``."""

    def __init__(self, dead: Sequence[int] = (1,)) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            OrderedDict(fc=bounded_linear(6, 9, input_bound=1.0, dead=dead, seed=9), act=nn.ReLU())
        )
        self.head = nn.Linear(9, 2)
        self.expected_dead = {"encoder.act": sorted(dead)}

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """``features``: ``(N, 6)`` in [-1, 1]; ``labels`` ``(N,)`` is accepted and ignored."""
        return self.head(self.encoder(features))

    def make_batches(self, n: int = 4, batch: int = 16, seed: int = 0) -> list[dict[str, Tensor]]:
        """Dicts ``{"features": (batch, 6), "labels": (batch,)}``."""
        xs = batches((batch, 6), n, seed=seed)
        return [{"features": x, "labels": torch.zeros(batch, dtype=torch.long)} for x in xs]


def all_models() -> list[nn.Module]:
    """One instance of every model above (each has ``expected_dead`` and ``make_batches``)."""
    return [
        DeadMLP(),
        FirstLayerNegativeWeights(),
        DeadChannelCNN(),
        TinyTransformerBlock(),
        ReusedReLUModel(),
        InplaceReLUModel(),
        DictInputModel(),
    ]


#: Units of the tiny OPT (:func:`tiny_opt`) killed by construction, by site.
OPT_DEAD = {
    "model.decoder.layers.0.activation_fn": [2, 9],
    "model.decoder.layers.1.activation_fn": [0],
}


def tiny_opt(transformers: Any) -> Any:
    """A 2-layer OPT (hidden 16, ReLU FFN of 32, no dropout, random init, seed 0) whose fc1
    biases are +10 except the :data:`OPT_DEAD` units at -1000: exactly those are dead."""
    torch.manual_seed(0)
    cfg = transformers.OPTConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        ffn_dim=32,
        num_attention_heads=2,
        max_position_embeddings=64,
        word_embed_proj_dim=16,
        dropout=0.0,
        attention_dropout=0.0,
    )
    model = transformers.OPTForCausalLM(cfg)
    with torch.no_grad():
        for i, layer in enumerate(model.model.decoder.layers):
            layer.fc1.bias.fill_(10.0)
            layer.fc1.bias[OPT_DEAD[f"model.decoder.layers.{i}.activation_fn"]] = DEAD_BIAS
    return model


def bn_dead_in_train_mode() -> tuple[nn.Sequential, Tensor]:
    """``Linear(4, 3) -> BatchNorm1d -> ReLU -> Linear(3, 1)`` in train mode, and a batch of 32
    on which ReLU unit 1 is dead only under train-mode BatchNorm (batch statistics: bias -10
    after normalising) and unit 2 in both modes (bias -1e4). BatchNorm's momentum is 0, so
    in eval mode it uses mean 0, variance 1: unit 1 is then active somewhere."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=0.0), nn.ReLU(), nn.Linear(3, 1)
    )
    with torch.no_grad():
        net[1].bias[1] = -10.0
        net[1].bias[2] = -1e4
    x = 100 * torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    net.train()
    return net, x
