"""Train many small networks at once, and count their dead units per member, per layer.

The lab's sweeps need hundreds of small runs. :func:`train_batched` trains ``M`` members
of one architecture in one program: the members' ``nn.Module`` s are built one by one (so
any initialiser, e.g. ``deadrelu.init.rai_init_``, can be applied to each first), their
parameters are stacked with ``torch.func.stack_module_state`` and each layer runs once for
all members of a stack: a ``Linear`` as one batched matmul (``torch.baddbmm``), a ``Conv1d``
as one batched matmul on the unfolded input (im2col), BatchNorm on the stacked tensor; an
activation with parameters of its own (PReLU) runs as ``torch.vmap`` over
``torch.func.functional_call`` with each member's parameters. :func:`train_sequential`
trains the same members one after the other with plain ``nn.Module`` calls and
``torch.optim``: the reference the batched path is tested against.

Architectures (``TrainConfig.arch``):

* ``"mlp"`` (:class:`MLP`): ``Linear -> act`` per hidden layer, then a ``Linear`` classifier;
  ``widths = (D, H1, ..., HL, C)``.
* ``"cnn"`` (:class:`CNN`): the ``D`` input features read as a 1-channel signal of length
  ``D`` (MNIST-1D), then per block ``Conv1d(k, stride 2, no bias) -> BatchNorm1d -> act``,
  global average pooling and a ``Linear`` classifier; ``widths = (D, C1, ..., CL, C)``
  (channels per block). A "unit" is a channel: the BatchNorm output of channel ``c`` at
  every position of every probe row is its pre-activation; its bias is BatchNorm's beta.

Each :class:`Member` has its own seed (initial weights and minibatch order), learning
rate, initial hidden bias, one-off bias kick and activation *parameters*; all members of
one call share the architecture (``widths``, ``arch``), the optimizer, the activation
*name* and ``Member.slopes``. Members whose activation parameters differ (e.g. Leaky ReLU
slopes 0.01 and 0.1) are trained in one call as several groups, one per distinct parameter
set (and per block of :data:`MEMBER_CHUNK` members, which keeps each stack in the CPU
caches).

PReLU (He et al. 2015) has one learned slope per hidden unit (per channel in the CNN),
initial value 0.25, by default (``Member.slopes="per_unit"``); ``slopes="shared"`` gives
one slope per layer. Slopes are never weight-decayed.

Training minimises the mean cross-entropy, ``steps`` steps of ``batch_size`` examples
drawn without replacement (a new permutation of the training set per epoch, from the
member's seed; a last incomplete batch is dropped), with ``TrainConfig.optimizer``:
``"sgd"`` (plain SGD), ``"momentum"`` (SGD, momentum 0.9, as ``torch.optim.SGD``) or
``"adam"`` (``torch.optim.Adam`` with its defaults). ``weight_decay`` is the optimizer's
L2 term (added to the gradient) on every parameter except activation slopes.

Dead counting (the definitions are ``deadrelu.classify``'s, never copied): at every
evaluation step (BatchNorm in eval mode, on its running statistics) the pre-activations
``z`` of every hidden unit are computed on a **fixed probe set, the whole training set**
(chunked, no gradient), and

* ``dead``: ``classify.dead_mask(active_count)``, never ``z > 0`` on any training input
  (and, in the CNN, at any position);
* ``frozen``: every probe ``z`` lies in the activation's zero-gradient region
  (``Activation.zero_grad``): no training example sends gradient into the unit (for ReLU
  this equals dead; for Leaky ReLU, ELU, ... it is empty);
* ``saturated``: ``classify.saturated_mask`` over the unit's ``[min z, max z]``.

The training set is the probe because a unit that is dead on every training input gets no
gradient from any minibatch, which is what the notes' claims are about; test accuracy and
loss are measured on the test set.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from deadrelu.activations import Activation, get
from deadrelu.classify import dead_mask, saturated_mask
from deadrelu.lab.data import Dataset

__all__ = [
    "ARCHS",
    "CNN",
    "MLP",
    "OPTIMIZERS",
    "Member",
    "StepHook",
    "TrainConfig",
    "TrainResult",
    "build_member",
    "train_batched",
    "train_sequential",
]

#: Probe chunk size (rows of the probe set evaluated at once).
PROBE_CHUNK = 1000

#: Members trained in one batched matmul. Larger stacks stop fitting in the CPU caches:
#: on a 2-core EPYC (1 MB L2 per core), 64 MLPs 40-100-100-10 at batch 100 trained 1.3x
#: faster as four stacks of 16 than as one stack of 64.
MEMBER_CHUNK = 16

#: Optimizers of :class:`TrainConfig`.
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam")

#: Architectures of :class:`TrainConfig`.
ARCHS: tuple[str, ...] = ("mlp", "cnn")

#: SGD momentum of the ``"momentum"`` optimizer.
MOMENTUM = 0.9

#: ``torch.optim.Adam``'s defaults.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

#: CNN: convolution stride, BatchNorm epsilon and momentum (``nn.BatchNorm1d``'s defaults).
CONV_STRIDE = 2
BN_EPS = 1e-5
BN_MOMENTUM = 0.1

#: Values of :attr:`Member.slopes`.
SLOPES: tuple[str, ...] = ("per_unit", "shared")


def _act_module(act: Activation, units: int, slopes: str) -> nn.Module:
    """The activation module of a hidden layer of ``units`` units (channels): a learnable
    activation with a ``num_parameters`` parameter (PReLU) gets ``units`` slopes
    (``slopes="per_unit"``) or one (``"shared"``)."""
    if slopes not in SLOPES:
        raise ValueError(f"slopes must be one of {list(SLOPES)}, got {slopes!r}")
    if act.spec.learnable and "num_parameters" in act.params:
        n = units if slopes == "per_unit" else 1
        return act.spec.module(**{**act.params, "num_parameters": n})
    return act.module()


class MLP(nn.Module):
    """``Linear -> act -> ... -> Linear`` returning the logits and every hidden layer's values.

    Args:
        widths: ``(D, H1, ..., HL, C)``: input features, hidden widths, classes.
        activation: the hidden activation (anything ``deadrelu.activations.get`` takes).
        slopes: for PReLU, ``"per_unit"`` (one slope per hidden unit) or ``"shared"`` (one
            per layer); ignored by other activations.
    """

    def __init__(
        self, widths: Sequence[int], activation: Activation | str, slopes: str = "per_unit"
    ) -> None:
        super().__init__()
        if len(widths) < 3:
            raise ValueError(f"widths needs input, >= 1 hidden and output sizes, got {widths}")
        act = get(activation)
        if act is None:
            raise ValueError("MLP needs an activation, got None")
        self.widths = tuple(int(w) for w in widths)
        self.activation = act
        self.linears = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(self.widths[:-1], self.widths[1:], strict=True)
        )
        self.acts = nn.ModuleList(_act_module(act, w, slopes) for w in self.widths[1:-1])

    def linear_layers(self) -> list[nn.Linear]:
        """The ``Linear`` layers, input to output (the last one is the classifier)."""
        return [m for m in self.linears if isinstance(m, nn.Linear)]

    def hidden_biases(self) -> list[Tensor]:
        """The hidden layers' bias vectors (``(H_l,)`` each), input to output."""
        return [lin.bias for lin in self.linear_layers()[:-1]]

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """``x``: ``(N, D)`` -> logits ``(N, C)``, pre-activations and activations, each a
        list of ``(N, H_l)`` per hidden layer."""
        pre: list[Tensor] = []
        post: list[Tensor] = []
        h = x
        for lin, act in zip(self.linears[:-1], self.acts, strict=True):
            z = lin(h)
            h = act(z)
            pre.append(z)
            post.append(h)
        return self.linears[-1](h), pre, post


class CNN(nn.Module):
    """``[Conv1d -> BatchNorm1d -> act] * L -> global mean pool -> Linear`` on 1-D signals.

    Args:
        widths: ``(D, C1, ..., CL, C)``: signal length (the input's features, read as one
            channel), channels per block, classes.
        activation: the activation after each BatchNorm.
        kernel_size: odd convolution width; padding ``kernel_size // 2``, stride
            :data:`CONV_STRIDE`, no convolution bias (BatchNorm's beta is the bias).
        slopes: for PReLU, ``"per_unit"`` (one slope per channel) or ``"shared"``.
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation: Activation | str,
        kernel_size: int = 5,
        slopes: str = "per_unit",
    ) -> None:
        super().__init__()
        if len(widths) < 3:
            raise ValueError(f"widths needs input, >= 1 block and output sizes, got {widths}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        act = get(activation)
        if act is None:
            raise ValueError("CNN needs an activation, got None")
        self.widths = tuple(int(w) for w in widths)
        self.activation = act
        self.kernel_size = kernel_size
        chans = (1, *self.widths[1:-1])
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, kernel_size, CONV_STRIDE, kernel_size // 2, bias=False)
            for a, b in itertools.pairwise(chans)
        )
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(c, eps=BN_EPS, momentum=BN_MOMENTUM) for c in chans[1:]
        )
        self.acts = nn.ModuleList(_act_module(act, c, slopes) for c in chans[1:])
        self.head = nn.Linear(chans[-1], self.widths[-1])

    def hidden_biases(self) -> list[Tensor]:
        """The blocks' bias vectors (BatchNorm's beta, ``(C_l,)`` each), input to output."""
        return [bn.bias for bn in self.norms if isinstance(bn, nn.BatchNorm1d)]

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """``x``: ``(N, D)`` -> logits ``(N, C)``, pre-activations (BatchNorm outputs) and
        activations, each a list of ``(N, C_l, L_l)`` per block."""
        pre: list[Tensor] = []
        post: list[Tensor] = []
        h = x.unsqueeze(1)
        for conv, bn, act in zip(self.convs, self.norms, self.acts, strict=True):
            z = bn(conv(h))
            h = act(z)
            pre.append(z)
            post.append(h)
        return self.head(h.mean(dim=-1)), pre, post


Net = MLP | CNN


@dataclass(frozen=True)
class Member:
    """One network of a sweep.

    Attributes:
        seed: seeds the initial weights and the minibatch order.
        lr: learning rate.
        activation: hidden activation; all members of a call share its name, parameters
            may differ (``"leaky_relu(0.1)"``).
        bias_init: value of every hidden bias at init; None keeps the initialiser's.
        bias_kick: added once to every hidden bias just before step ``kick_step`` (a large
            negative update, C4); 0 for none.
        kick_step: the step at which ``bias_kick`` is applied.
        init: ``"he"`` (Kaiming normal, fan-in, gain sqrt 2; biases 0), ``"lecun"``
            (normal, std 1/sqrt(fan-in); biases 0) or ``"torch"`` (the modules' default).
        init_fn: applied to the built network after ``init`` and before ``bias_init`` (e.g.
            ``deadrelu.init.rai_init_``); must be deterministic given the global RNG.
        slopes: PReLU only: ``"per_unit"`` (one slope per hidden unit / channel, He et al.
            2015) or ``"shared"`` (one per layer).
        tag: free label carried into results (not used for training).
    """

    seed: int
    lr: float
    activation: str | Activation = "relu"
    bias_init: float | None = None
    bias_kick: float = 0.0
    kick_step: int = 0
    init: str = "he"
    init_fn: Callable[[nn.Module], Any] | None = None
    slopes: str = "per_unit"
    tag: str = ""


@dataclass(frozen=True)
class TrainConfig:
    """What every member of a call shares.

    Attributes:
        widths: ``(D, H1, ..., C)`` (MLP) or ``(D, C1, ..., C)`` (CNN channels); D and C
            must match the dataset.
        steps: optimizer steps.
        batch_size: examples per step.
        eval_every: evaluate every this many steps (and at step 0 and at ``steps``).
        record_masks: keep the per-unit dead masks at every evaluation
            (:attr:`TrainResult.dead_masks`).
        probe_limit: use only the first ``probe_limit`` training rows as the probe set
            (None: all of them).
        optimizer: ``"sgd"``, ``"momentum"`` (0.9) or ``"adam"`` (torch defaults).
        weight_decay: L2 coefficient added to the gradient of every parameter except
            activation slopes (as the optimizers' ``weight_decay``).
        arch: ``"mlp"`` or ``"cnn"`` (see the module docstring).
        kernel_size: the CNN's convolution width.
        eval_at: extra evaluation steps (e.g. the step before a kick), besides every
            ``eval_every``-th; steps outside ``[0, steps]`` are ignored.
    """

    widths: tuple[int, ...]
    steps: int
    batch_size: int = 100
    eval_every: int = 50
    record_masks: bool = False
    probe_limit: int | None = None
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    arch: str = "mlp"
    kernel_size: int = 5
    eval_at: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; choose one of {list(OPTIMIZERS)}"
            )
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {list(ARCHS)}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def eval_steps(self) -> list[int]:
        """The steps at which the members are evaluated: 0, eval_every, ..., steps, and the
        ``eval_at`` steps, sorted."""
        if self.steps < 0 or self.eval_every < 1:
            raise ValueError(
                f"need steps >= 0 and eval_every >= 1, got {self.steps}, {self.eval_every}"
            )
        out = set(range(0, self.steps + 1, self.eval_every))
        out.add(self.steps)
        out.update(s for s in self.eval_at if 0 <= s <= self.steps)
        return sorted(out)


@dataclass
class TrainResult:
    """Curves of ``M`` members at ``T`` evaluation steps over ``L`` hidden layers.

    Attributes:
        steps: the ``T`` evaluation steps.
        test_acc: ``(M, T)`` test accuracy.
        test_loss: ``(M, T)`` mean test cross-entropy (NaN/inf when diverged).
        train_loss: ``(M, T)`` mean loss of the minibatches since the previous evaluation
            (NaN at step 0).
        dead_frac: ``(M, T, L)`` fraction of dead units (``classify.dead_mask``).
        frozen_frac: ``(M, T, L)`` fraction of units with zero gradient on every probe row.
        saturated_frac: ``(M, T, L)`` fraction of saturated units (``classify.saturated_mask``).
        mean_act: ``(M, T, L)`` mean activation value over probe rows (and positions) and
            units.
        dead_masks: per hidden layer, ``(T, M, H_l)`` bool dead masks (only with
            ``record_masks``; else empty).
        state: final stacked parameters and buffers, ``name -> (M, *shape)`` (names of the
            :class:`MLP` / :class:`CNN` state dict).
        members: the members, in the order of the first axis.
        widths: the architecture's widths.
        config: the training configuration (None only for results built by hand).
    """

    steps: list[int]
    test_acc: Tensor
    test_loss: Tensor
    train_loss: Tensor
    dead_frac: Tensor
    frozen_frac: Tensor
    saturated_frac: Tensor
    mean_act: Tensor
    dead_masks: list[Tensor]
    state: dict[str, Tensor]
    members: list[Member]
    widths: tuple[int, ...] = field(default=())
    config: TrainConfig | None = None

    @property
    def diverged(self) -> Tensor:
        """``(M,)`` bool: the member's final test loss or parameters are not finite."""
        bad = ~torch.isfinite(self.test_loss[:, -1])
        for v in self.state.values():
            if v.is_floating_point():
                bad |= ~torch.isfinite(v.reshape(v.shape[0], -1)).all(dim=1)
        return bad

    def pooled(self, what: str = "dead_frac", t: int = -1) -> Tensor:
        """``(M,)``: a per-layer fraction (``"dead_frac"``, ``"frozen_frac"``,
        ``"saturated_frac"``) at evaluation ``t`` pooled over all hidden units (layers
        weighted by width)."""
        per_layer = getattr(self, what)[:, t, :]  # (M, L)
        w = torch.tensor(self.widths[1:-1], dtype=torch.float64)
        return (per_layer * w).sum(dim=1) / w.sum()

    def slopes(self, layer: int) -> Tensor:
        """``(M, S)``: the learned PReLU slopes of hidden layer ``layer`` (``S`` = units
        or 1); raises ``KeyError`` for an activation without slopes."""
        key = f"acts.{layer}.weight"
        if key not in self.state:
            raise KeyError(f"no learned slopes in layer {layer}: the activation has none")
        return self.state[key]

    def module(self, i: int) -> MLP | CNN:
        """Member ``i`` as a trained network (a fresh module holding copies of its weights
        and buffers), in eval mode."""
        cfg = self.config or TrainConfig(widths=self.widths, steps=0)
        m = _new_net(self.members[i], cfg)
        m.load_state_dict({k: v[i].detach().clone() for k, v in self.state.items()})
        return m.eval()


# --------------------------------------------------------------------------------------
# Building members
# --------------------------------------------------------------------------------------


def _init_weight(weight: Tensor, bias: Tensor | None, how: str) -> None:
    if how == "torch":
        return
    fan_in = weight[0].numel()
    if how == "he":
        std = math.sqrt(2.0 / fan_in)
    elif how == "lecun":
        std = math.sqrt(1.0 / fan_in)
    else:
        raise ValueError(f"unknown init {how!r}; choose 'he', 'lecun' or 'torch'")
    with torch.no_grad():
        weight.normal_(0.0, std)
        if bias is not None:
            bias.zero_()


def _new_net(member: Member, cfg: TrainConfig) -> MLP | CNN:
    act = get(member.activation) or "relu"
    if cfg.arch == "cnn":
        return CNN(cfg.widths, act, cfg.kernel_size, member.slopes)
    return MLP(cfg.widths, act, member.slopes)


def build_member(
    member: Member, widths: Sequence[int] | TrainConfig, arch: str = "mlp"
) -> MLP | CNN:
    """The member's initial network, reproducible from ``member.seed`` alone.

    ``widths`` is the architecture's widths (an MLP, or ``arch="cnn"``) or a whole
    :class:`TrainConfig` (its ``widths``, ``arch`` and ``kernel_size``). Uses a forked
    global RNG seeded with ``member.seed``, so the caller's RNG state is left untouched.
    """
    cfg = (
        widths
        if isinstance(widths, TrainConfig)
        else TrainConfig(widths=tuple(widths), steps=0, arch=arch)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(member.seed)
        model = _new_net(member, cfg)
        if isinstance(model, MLP):
            for lin in model.linear_layers():
                _init_weight(lin.weight, lin.bias, member.init)
        else:
            for conv in model.convs:
                assert isinstance(conv, nn.Conv1d)
                _init_weight(conv.weight, None, member.init)
            _init_weight(model.head.weight, model.head.bias, member.init)
        if member.init_fn is not None:
            member.init_fn(model)
        if member.bias_init is not None:
            with torch.no_grad():
                for b in model.hidden_biases():
                    b.fill_(member.bias_init)
    return model


def _batch_order(seed: int, n: int, steps: int, batch: int) -> Tensor:
    """``(steps, batch)`` row indices: per epoch a fresh permutation from ``seed``."""
    if batch > n:
        raise ValueError(f"batch_size {batch} is larger than the training set ({n} rows)")
    g = torch.Generator().manual_seed(10_007 + seed)
    per_epoch = n // batch
    rows: list[Tensor] = []
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=g)[: per_epoch * batch].view(per_epoch, batch)
        rows.append(perm[: steps - done])
        done += rows[-1].shape[0]
    return torch.cat(rows) if rows else torch.empty(0, batch, dtype=torch.long)


def _check(members: Sequence[Member], cfg: TrainConfig, data: Dataset) -> list[Activation]:
    if not members:
        raise ValueError("no members to train: pass at least one Member")
    acts: list[Activation] = []
    for m in members:
        a = get(m.activation)
        if a is None:
            raise ValueError("every member needs an activation, got None")
        if m.slopes not in SLOPES:
            raise ValueError(f"Member.slopes must be one of {list(SLOPES)}, got {m.slopes!r}")
        acts.append(a)
    names = {a.name for a in acts}
    if len(names) > 1:
        raise ValueError(
            f"all members of one call must share the activation name, got {sorted(names)}; "
            "train each activation in its own call"
        )
    if acts[0].spec.learnable and len({m.slopes for m in members}) > 1:
        raise ValueError(
            "all members of one call must share Member.slopes (the state's shapes differ); "
            "train per-unit and shared slopes in separate calls"
        )
    if cfg.widths[0] != data.n_features or cfg.widths[-1] != data.n_classes:
        raise ValueError(
            f"widths {cfg.widths} do not fit the dataset {data.name!r} "
            f"({data.n_features} features, {data.n_classes} classes)"
        )
    return acts


def _param_key(act: Activation) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(act.params.items()))


def _is_slope(name: str) -> bool:
    """Activation parameters (PReLU slopes) are named ``acts.<layer>.<name>``."""
    return name.startswith("acts.")


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------


@dataclass
class _Probe:
    """Per-unit accumulators over the probe set for ``m`` members and one hidden layer."""

    active: Tensor  # (m, U) int64
    zmin: Tensor  # (m, U)
    zmax: Tensor  # (m, U)
    frozen: Tensor  # (m, U) bool: zero gradient on every row so far
    act_sum: Tensor  # (m,) float64
    rows: int = 0  # probe rows (times positions) seen


def _new_probe(m: int, units: int, device: torch.device) -> _Probe:
    return _Probe(
        active=torch.zeros(m, units, dtype=torch.long, device=device),
        zmin=torch.full((m, units), math.inf, device=device),
        zmax=torch.full((m, units), -math.inf, device=device),
        frozen=torch.ones(m, units, dtype=torch.bool, device=device),
        act_sum=torch.zeros(m, dtype=torch.float64, device=device),
    )


def _units_last(t: Tensor) -> Tensor:
    """``(m, N, U)`` as is; ``(m, N, C, L)`` (conv) -> ``(m, N * L, C)``: every position
    of every row is one observation of its channel."""
    if t.dim() == 3:
        return t
    m, _, c, _ = t.shape
    return t.transpose(2, 3).reshape(m, -1, c)


def _accumulate(p: _Probe, z: Tensor, h: Tensor, act: Activation) -> None:
    """``z``, ``h``: ``(m, N, U)`` pre-activations and activations of one probe chunk."""
    p.active += (z > 0).sum(dim=1)
    p.zmin = torch.minimum(p.zmin, z.amin(dim=1))
    p.zmax = torch.maximum(p.zmax, z.amax(dim=1))
    p.frozen &= act.zero_grad(z).all(dim=1)
    p.act_sum += h.sum(dim=(1, 2), dtype=torch.float64)
    p.rows += int(z.shape[1])


def _finish(p: _Probe, act: Activation) -> dict[str, Tensor]:
    m, units = p.active.shape
    dead = dead_mask(p.active)
    sat = saturated_mask(p.zmin.reshape(-1), p.zmax.reshape(-1), act).view(m, units)
    return {
        "dead_mask": dead,
        "dead": dead.double().mean(dim=1),
        "frozen": p.frozen.double().mean(dim=1),
        "saturated": sat.double().mean(dim=1),
        "mean_act": p.act_sum / (p.rows * units),
    }


ForwardFn = Callable[[Tensor], tuple[Tensor, list[Tensor], list[Tensor]]]


def _evaluate(
    forward: ForwardFn, m: int, n_hidden: int, data: Dataset, act: Activation, probe: Tensor
) -> dict[str, Any]:
    """Evaluate ``m`` members; ``forward(x (N, D)) -> ((m, N, C), [(m, N, H)] or
    [(m, N, C_l, L_l)], [...])``."""
    with torch.no_grad():
        logits, _, _ = forward(data.x_test)
        y = data.y_test
        acc = (logits.argmax(dim=-1) == y).double().mean(dim=1)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).double(),
            y.repeat(m),
            reduction="none",
        ).view(m, -1)
        test_loss = loss.mean(dim=1)
        probes: list[_Probe] | None = None
        for start in range(0, probe.shape[0], PROBE_CHUNK):
            chunk = probe[start : start + PROBE_CHUNK]
            _, pre, post = forward(chunk)
            pre = [_units_last(z) for z in pre]
            post = [_units_last(h) for h in post]
            if probes is None:
                probes = [_new_probe(m, z.shape[-1], z.device) for z in pre]
            for p, z, h in zip(probes, pre, post, strict=True):
                _accumulate(p, z, h, act)
        assert probes is not None and len(probes) == n_hidden
        layers = [_finish(p, act) for p in probes]
    return {"acc": acc, "loss": test_loss, "layers": layers}


# --------------------------------------------------------------------------------------
# Batched optimizers
# --------------------------------------------------------------------------------------


class _StackedOptimizer:
    """SGD / SGD with momentum / Adam over stacked ``(m, *shape)`` parameters, each member
    with its own learning rate; the same arithmetic as ``torch.optim`` (tested equal)."""

    def __init__(
        self, params: dict[str, Tensor], lr: Tensor, kind: str, weight_decay: float
    ) -> None:
        self.params = params
        self.lr = lr  # (m,)
        self.kind = kind
        self.wd = {k: (0.0 if _is_slope(k) else weight_decay) for k in params}
        self.state: dict[str, dict[str, Tensor]] = {}
        self.t = 0

    def _lr(self, p: Tensor) -> Tensor:
        return self.lr.view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor]) -> None:
        self.t += 1
        for (name, p), g in zip(self.params.items(), grads, strict=True):
            if self.wd[name]:
                g = g.add(p, alpha=self.wd[name])
            lr = self._lr(p)
            if self.kind == "sgd":
                p.addcmul_(lr, g, value=-1.0)
            elif self.kind == "momentum":
                st = self.state.setdefault(name, {})
                if "buf" not in st:
                    st["buf"] = g.clone()
                else:
                    st["buf"].mul_(MOMENTUM).add_(g)
                p.addcmul_(lr, st["buf"], value=-1.0)
            else:
                b1, b2 = ADAM_BETAS
                st = self.state.setdefault(name, {})
                if "m" not in st:
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                st["m"].lerp_(g, 1 - b1)
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                bc1 = 1 - b1**self.t
                bc2_sqrt = math.sqrt(1 - b2**self.t)
                denom = (st["v"].sqrt() / bc2_sqrt).add_(ADAM_EPS)
                p.addcdiv_(st["m"] * (lr / bc1), denom, value=-1.0)


def _torch_optimizer(model: nn.Module, lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The sequential reference's optimizer: slopes in a group without weight decay."""
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not _is_slope(n)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if _is_slope(n)], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if cfg.optimizer == "momentum":
        return torch.optim.SGD(groups, lr=lr, momentum=MOMENTUM)
    return torch.optim.Adam(groups, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)


# --------------------------------------------------------------------------------------
# Batched path
# --------------------------------------------------------------------------------------


@dataclass
class _Group:
    """Members sharing the full activation (name and parameters), trained together.

    MLP: each ``Linear`` is one ``torch.baddbmm`` over the stacked ``(m, out, in)`` weights.
    CNN: each ``Conv1d`` is one ``torch.bmm`` of the stacked weights with the unfolded
    (im2col) input, channels last, and BatchNorm runs on the stacked ``(m, N, L, C)``
    tensor (batch statistics in training, running statistics in evaluation, updated as
    ``nn.BatchNorm1d`` does). The activation
    module is applied to the whole stacked tensor when it has no parameters; a learnable
    one (PReLU) runs as ``vmap`` over ``functional_call`` with each member's parameters.
    """

    index: Tensor  # (m,) positions of these members in the call
    act: Activation
    act_modules: list[nn.Module]  # template activation module per hidden layer
    params: dict[str, Tensor]  # stacked parameters, leaf tensors requiring grad
    buffers: dict[str, Tensor]  # stacked buffers (CNN BatchNorm statistics)
    opt: _StackedOptimizer
    batches: Tensor  # (steps, m, B)
    kicks: list[tuple[int, Tensor]]  # (step, (m,) kick per member)
    arch: str
    kernel_size: int

    def forward(
        self, x: Tensor, shared_input: bool, training: bool = False
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """``x``: ``(N, D)`` (``shared_input``) or ``(m, N, D)`` -> logits ``(m, N, C)``,
        pre-activations and activations per hidden layer (``(m, N, H_l)`` or, CNN,
        ``(m, N, C_l, L_l)``). ``training``: BatchNorm on batch statistics, updating the
        running ones."""
        m = int(self.index.shape[0])
        h = x.expand(m, -1, -1) if shared_input else x
        if self.arch == "cnn":
            return self._forward_cnn(h, training)
        pre: list[Tensor] = []
        post: list[Tensor] = []
        n_hidden = len(self.act_modules)
        for i in range(n_hidden + 1):
            w = self.params[f"linears.{i}.weight"]  # (m, out, in)
            b = self.params[f"linears.{i}.bias"]  # (m, out)
            z = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i == n_hidden:
                return z, pre, post
            h = self._activate(i, z)
            pre.append(z)
            post.append(h)
        raise AssertionError("unreachable")

    def _forward_cnn(self, x: Tensor, training: bool) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        # channels-last (m, N, L, C) throughout: each convolution is one im2col + bmm
        m, n, _ = x.shape
        h = x.unsqueeze(-1)  # (m, N, D, 1)
        pad = self.kernel_size // 2
        pre: list[Tensor] = []
        post: list[Tensor] = []
        for i in range(len(self.act_modules)):
            w = self.params[f"convs.{i}.weight"]  # (m, Cout, Cin, k)
            cout = w.shape[1]
            cols = F.pad(h, (0, 0, pad, pad)).unfold(2, self.kernel_size, CONV_STRIDE)
            length = cols.shape[2]  # cols: (m, N, L', Cin, k)
            y = torch.bmm(cols.reshape(m, n * length, -1), w.reshape(m, cout, -1).transpose(1, 2))
            z = self._batch_norm(i, y.view(m, n, length, cout), training)
            h = self._activate(i, z.transpose(2, 3)).transpose(2, 3)
            pre.append(z.transpose(2, 3))  # (m, N, C, L) views
            post.append(h.transpose(2, 3))
        pooled = h.mean(dim=2)  # (m, N, C)
        wh, bh = self.params["head.weight"], self.params["head.bias"]
        return torch.baddbmm(bh.unsqueeze(1), pooled, wh.transpose(1, 2)), pre, post

    def _batch_norm(self, i: int, y: Tensor, training: bool) -> Tensor:
        """``y``: ``(m, N, L, C)``; BatchNorm1d of every member on its own channels."""
        gamma = self.params[f"norms.{i}.weight"][:, None, None, :]
        beta = self.params[f"norms.{i}.bias"][:, None, None, :]
        rm = self.buffers[f"norms.{i}.running_mean"]  # (m, C)
        rv = self.buffers[f"norms.{i}.running_var"]
        if training:
            var, mean = torch.var_mean(y.reshape(y.shape[0], -1, y.shape[-1]), 1, unbiased=False)
            with torch.no_grad():
                count = y.shape[1] * y.shape[2]
                rm.mul_(1 - BN_MOMENTUM).add_(mean.detach(), alpha=BN_MOMENTUM)
                unbiased = var.detach() * (count / max(count - 1, 1))
                rv.mul_(1 - BN_MOMENTUM).add_(unbiased, alpha=BN_MOMENTUM)
                self.buffers[f"norms.{i}.num_batches_tracked"].add_(1)
        else:
            mean, var = rm, rv
        inv = torch.rsqrt(var + BN_EPS)[:, None, None, :]
        return (y - mean[:, None, None, :]) * inv * gamma + beta

    def _activate(self, i: int, z: Tensor) -> Tensor:
        module = self.act_modules[i]
        prefix = f"acts.{i}."
        own = {k[len(prefix) :]: v for k, v in self.params.items() if k.startswith(prefix)}
        if not own:
            return module(z)

        def one(p: dict[str, Tensor], zi: Tensor) -> Tensor:
            out: Tensor = functional_call(module, p, (zi,))
            return out

        result: Tensor = torch.vmap(one)(own, z)
        return result


def _make_groups(
    members: Sequence[Member],
    acts: Sequence[Activation],
    cfg: TrainConfig,
    n_train: int,
    device: torch.device,
) -> list[_Group]:
    keys: dict[tuple[tuple[str, Any], ...], list[int]] = {}
    for i, a in enumerate(acts):
        keys.setdefault(_param_key(a), []).append(i)
    chunks = [
        idx[start : start + MEMBER_CHUNK]
        for idx in keys.values()
        for start in range(0, len(idx), MEMBER_CHUNK)
    ]
    groups: list[_Group] = []
    for idx in chunks:
        models = [build_member(members[i], cfg).to(device) for i in idx]
        params, buffers = stack_module_state(models)
        if buffers and cfg.arch != "cnn":
            raise ValueError(f"members with buffers are not supported, got {sorted(buffers)}")
        act_modules = [copy.deepcopy(a) for a in models[0].acts]
        order = torch.stack(
            [_batch_order(members[i].seed, n_train, cfg.steps, cfg.batch_size) for i in idx],
            dim=1,
        ).to(device)
        kick_steps = sorted({members[i].kick_step for i in idx if members[i].bias_kick != 0})
        kicks = [
            (
                s,
                torch.tensor(
                    [members[i].bias_kick if members[i].kick_step == s else 0.0 for i in idx],
                    device=device,
                ),
            )
            for s in kick_steps
        ]
        lr = torch.tensor([members[i].lr for i in idx], device=device)
        groups.append(
            _Group(
                index=torch.tensor(idx, device=device),
                act=acts[idx[0]],
                act_modules=act_modules,
                params=params,
                buffers={k: v.detach().clone() for k, v in buffers.items()},
                opt=_StackedOptimizer(params, lr, cfg.optimizer, cfg.weight_decay),
                batches=order,
                kicks=kicks,
                arch=cfg.arch,
                kernel_size=cfg.kernel_size,
            )
        )
    return groups


def _hidden_bias_names(cfg: TrainConfig) -> list[str]:
    n = len(cfg.widths) - 2
    if cfg.arch == "cnn":
        return [f"norms.{i}.bias" for i in range(n)]
    return [f"linears.{i}.bias" for i in range(n)]


def train_batched(members: Sequence[Member], cfg: TrainConfig, data: Dataset) -> TrainResult:
    """Train every member at once (stacked parameters); see the module docstring.

    Args:
        members: the ``M`` members (same activation name; parameters may differ).
        cfg: shared architecture, optimizer and schedule.
        data: the dataset; its device is used.

    Returns:
        The members' curves, in the order of ``members``.
    """
    acts = _check(members, cfg, data)
    device = data.x_train.device
    groups = _make_groups(members, acts, cfg, data.x_train.shape[0], device)
    probe = data.x_train if cfg.probe_limit is None else data.x_train[: cfg.probe_limit]
    rec = _Recorder(len(members), cfg, device)
    bias_names = _hidden_bias_names(cfg)
    eval_at = set(cfg.eval_steps())
    loss_sum = torch.zeros(len(members), dtype=torch.float64, device=device)
    loss_n = 0

    for step in range(cfg.steps + 1):
        for g in groups:
            for s, kick in g.kicks:
                if s == step:
                    with torch.no_grad():
                        for name in bias_names:
                            g.params[name] += kick[:, None]
        if step in eval_at:
            for g in groups:

                def fwd(x: Tensor, g: _Group = g) -> tuple[Tensor, list[Tensor], list[Tensor]]:
                    return g.forward(x, shared_input=True)

                ev = _evaluate(fwd, len(g.index), len(cfg.widths) - 2, data, g.act, probe)
                rec.store(step, g.index, ev)
            rec.store_train_loss(step, loss_sum / max(loss_n, 1) if loss_n else None)
            loss_sum.zero_()
            loss_n = 0
        if step == cfg.steps:
            break
        for g in groups:
            rows = g.batches[step]  # (m, B)
            x = data.x_train[rows]  # (m, B, D)
            y = data.y_train[rows]  # (m, B)
            logits, _, _ = g.forward(x, shared_input=False, training=True)
            per = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none"
            ).view(rows.shape)
            member_loss = per.mean(dim=1)  # (m,)
            grads = torch.autograd.grad(member_loss.sum(), list(g.params.values()))
            g.opt.step(grads)
            with torch.no_grad():
                loss_sum.index_add_(0, g.index, member_loss.detach().double())
        loss_n += 1

    state: dict[str, Tensor] = {}
    first = {**groups[0].params, **groups[0].buffers}
    for name, t in first.items():
        full = torch.empty((len(members), *t.shape[1:]), dtype=t.dtype, device=device)
        for g in groups:
            full[g.index] = {**g.params, **g.buffers}[name].detach()
        state[name] = full
    return rec.result(list(members), state, cfg)


# --------------------------------------------------------------------------------------
# Sequential reference
# --------------------------------------------------------------------------------------


#: ``on_step(step, model, optimizer)``: called by :func:`train_sequential` after each
#: optimizer step (``step`` counts completed steps, from 1); may change the model in place.
StepHook = Callable[[int, Any, torch.optim.Optimizer], None]


def train_sequential(
    members: Sequence[Member],
    cfg: TrainConfig,
    data: Dataset,
    on_step: StepHook | None = None,
) -> TrainResult:
    """Train the members one after the other with plain modules and ``torch.optim``.

    Same members, batches, kicks, optimizer and evaluation as :func:`train_batched`; the
    reference the batched path is tested against. ``on_step(step, model, optimizer)``, when
    given, runs after every optimizer step (e.g. ReDo recycling, which changes one model at
    a time).
    """
    acts = _check(members, cfg, data)
    device = data.x_train.device
    probe = data.x_train if cfg.probe_limit is None else data.x_train[: cfg.probe_limit]
    rec = _Recorder(len(members), cfg, device)
    eval_at = set(cfg.eval_steps())
    final: list[dict[str, Tensor]] = []
    for i, (member, act) in enumerate(zip(members, acts, strict=True)):
        model = build_member(member, cfg).to(device)
        opt = _torch_optimizer(model, member.lr, cfg)
        order = _batch_order(member.seed, data.x_train.shape[0], cfg.steps, cfg.batch_size)
        index = torch.tensor([i], device=device)
        loss_sum, loss_n = 0.0, 0

        def fwd(x: Tensor, model: Net = model) -> tuple[Tensor, list[Tensor], list[Tensor]]:
            logits, pre, post = model(x)
            return logits[None], [z[None] for z in pre], [h[None] for h in post]

        for step in range(cfg.steps + 1):
            if member.bias_kick != 0 and step == member.kick_step:
                with torch.no_grad():
                    for b in model.hidden_biases():
                        b.add_(member.bias_kick)
            if step in eval_at:
                model.eval()
                ev = _evaluate(fwd, 1, len(cfg.widths) - 2, data, act, probe)
                rec.store(step, index, ev)
                tl = torch.tensor([loss_sum / loss_n], dtype=torch.float64) if loss_n else None
                rec.store_train_loss(step, tl, index)
                loss_sum, loss_n = 0.0, 0
            if step == cfg.steps:
                break
            model.train()
            rows = order[step].to(device)
            logits, _, _ = model(data.x_train[rows])
            loss = F.cross_entropy(logits, data.y_train[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach())
            loss_n += 1
            if on_step is not None:
                on_step(step + 1, model, opt)
        final.append({k: v.detach() for k, v in model.state_dict().items()})
    state = {k: torch.stack([f[k] for f in final]) for k in final[0]}
    return rec.result(list(members), state, cfg)


# --------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------


class _Recorder:
    """Collects evaluations into ``(M, T, ...)`` tensors."""

    def __init__(self, m: int, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.steps = cfg.eval_steps()
        self.pos = {s: i for i, s in enumerate(self.steps)}
        t, layers = len(self.steps), len(cfg.widths) - 2
        f64 = torch.float64
        self.acc = torch.full((m, t), math.nan, dtype=f64, device=device)
        self.loss = torch.full((m, t), math.nan, dtype=f64, device=device)
        self.train_loss = torch.full((m, t), math.nan, dtype=f64, device=device)
        self.layer = {
            k: torch.full((m, t, layers), math.nan, dtype=f64, device=device)
            for k in ("dead", "frozen", "saturated", "mean_act")
        }
        self.masks = (
            [torch.zeros(t, m, h, dtype=torch.bool, device=device) for h in cfg.widths[1:-1]]
            if cfg.record_masks
            else []
        )

    def store(self, step: int, index: Tensor, ev: dict[str, Any]) -> None:
        j = self.pos[step]
        self.acc[index, j] = ev["acc"]
        self.loss[index, j] = ev["loss"]
        for li, layer in enumerate(ev["layers"]):
            for k in self.layer:
                self.layer[k][index, j, li] = layer[k].to(torch.float64)
            if self.masks:
                self.masks[li][j, index] = layer["dead_mask"]

    def store_train_loss(self, step: int, loss: Tensor | None, index: Tensor | None = None) -> None:
        if loss is None:
            return
        j = self.pos[step]
        if index is None:
            self.train_loss[:, j] = loss
        else:
            self.train_loss[index, j] = loss.to(self.train_loss.device)

    def result(
        self, members: list[Member], state: dict[str, Tensor], cfg: TrainConfig
    ) -> TrainResult:
        return TrainResult(
            steps=list(self.steps),
            test_acc=self.acc.cpu(),
            test_loss=self.loss.cpu(),
            train_loss=self.train_loss.cpu(),
            dead_frac=self.layer["dead"].cpu(),
            frozen_frac=self.layer["frozen"].cpu(),
            saturated_frac=self.layer["saturated"].cpu(),
            mean_act=self.layer["mean_act"].cpu(),
            dead_masks=[mk.cpu() for mk in self.masks],
            state={k: v.cpu() for k, v in state.items()},
            members=members,
            widths=cfg.widths,
            config=cfg,
        )
