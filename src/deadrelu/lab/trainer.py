"""Train many small MLPs at once, and count their dead units per member, per layer.

The lab's sweeps need hundreds of small runs. :func:`train_batched` trains ``M`` members
of one architecture in one program: the members' ``nn.Module`` s are built one by one (so
any initialiser, e.g. ``deadrelu.remedies.rai_init_``, can be applied to each first), their
parameters are stacked with ``torch.func.stack_module_state`` and each ``Linear`` runs as
one batched matmul (``torch.baddbmm``) for all members of a stack; an activation with
parameters of its own (PReLU) runs as ``torch.vmap`` over ``torch.func.functional_call``
with each member's parameters. :func:`train_sequential` trains the same members one
after the other with plain ``nn.Module`` calls and ``torch.optim.SGD``: the reference the
batched path is tested against.

Each :class:`Member` has its own seed (initial weights and minibatch order), learning
rate, initial hidden bias, one-off bias kick and activation *parameters*; all members of
one call share the architecture (``widths``) and the activation *name*. Members whose
activation parameters differ (e.g. Leaky ReLU slopes 0.01 and 0.1) are trained in one call
as several groups, one per distinct parameter set (and per block of
:data:`MEMBER_CHUNK` members, which keeps each stack in the CPU caches).

Training is plain minibatch SGD on the mean cross-entropy, ``steps`` steps of ``batch_size``
examples drawn without replacement (a new permutation of the training set per epoch, from
the member's seed; a last incomplete batch is dropped).

Dead counting (the definitions are ``deadrelu.classify``'s, never copied): at every
evaluation step the pre-activations ``z`` of every hidden unit are computed on a **fixed
probe set, the whole training set** (chunked, no gradient), and

* ``dead``: ``classify.dead_mask(active_count)``, never ``z > 0`` on any training input;
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
    "MLP",
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


class MLP(nn.Module):
    """``Linear -> act -> ... -> Linear`` returning the logits and every hidden layer's values.

    Args:
        widths: ``(D, H1, ..., HL, C)``: input features, hidden widths, classes.
        activation: the hidden activation (anything ``deadrelu.activations.get`` takes).
    """

    def __init__(self, widths: Sequence[int], activation: Activation | str) -> None:
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
        self.acts = nn.ModuleList(act.module() for _ in self.widths[1:-1])

    def linear_layers(self) -> list[nn.Linear]:
        """The ``Linear`` layers, input to output (the last one is the classifier)."""
        return [m for m in self.linears if isinstance(m, nn.Linear)]

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


@dataclass(frozen=True)
class Member:
    """One network of a sweep.

    Attributes:
        seed: seeds the initial weights and the minibatch order.
        lr: SGD learning rate.
        activation: hidden activation; all members of a call share its name, parameters
            may differ (``"leaky_relu(0.1)"``).
        bias_init: value of every hidden bias at init; None keeps the initialiser's.
        bias_kick: added once to every hidden bias just before step ``kick_step`` (a large
            negative update, C4); 0 for none.
        kick_step: the step at which ``bias_kick`` is applied.
        init: ``"he"`` (Kaiming normal, fan-in, gain sqrt 2; biases 0), ``"lecun"``
            (normal, std 1/sqrt(fan-in); biases 0) or ``"torch"`` (``nn.Linear``'s default).
        init_fn: applied to the built ``MLP`` after ``init`` and before ``bias_init`` (e.g.
            ``deadrelu.remedies.rai_init_``); must be deterministic given the global RNG.
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
    tag: str = ""


@dataclass(frozen=True)
class TrainConfig:
    """What every member of a call shares.

    Attributes:
        widths: ``(D, H1, ..., C)``; D and C must match the dataset.
        steps: SGD steps.
        batch_size: examples per step.
        eval_every: evaluate every this many steps (and at step 0 and at ``steps``).
        record_masks: keep the per-unit dead masks at every evaluation
            (:attr:`TrainResult.dead_masks`).
        probe_limit: use only the first ``probe_limit`` training rows as the probe set
            (None: all of them).
    """

    widths: tuple[int, ...]
    steps: int
    batch_size: int = 100
    eval_every: int = 50
    record_masks: bool = False
    probe_limit: int | None = None

    def eval_steps(self) -> list[int]:
        """The steps at which the members are evaluated: 0, eval_every, ..., steps."""
        if self.steps < 0 or self.eval_every < 1:
            raise ValueError(
                f"need steps >= 0 and eval_every >= 1, got {self.steps}, {self.eval_every}"
            )
        out = list(range(0, self.steps + 1, self.eval_every))
        if out[-1] != self.steps:
            out.append(self.steps)
        return out


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
        mean_act: ``(M, T, L)`` mean activation value over probe rows and units.
        dead_masks: per hidden layer, ``(T, M, H_l)`` bool dead masks (only with
            ``record_masks``; else empty).
        state: final stacked parameters, ``name -> (M, *shape)`` (``MLP`` parameter names).
        members: the members, in the order of the first axis.
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

    @property
    def diverged(self) -> Tensor:
        """``(M,)`` bool: the member's final test loss or parameters are not finite."""
        bad = ~torch.isfinite(self.test_loss[:, -1])
        for v in self.state.values():
            bad |= ~torch.isfinite(v.reshape(v.shape[0], -1)).all(dim=1)
        return bad

    def pooled(self, what: str = "dead_frac", t: int = -1) -> Tensor:
        """``(M,)``: a per-layer fraction (``"dead_frac"``, ``"frozen_frac"``,
        ``"saturated_frac"``) at evaluation ``t`` pooled over all hidden units (layers
        weighted by width)."""
        per_layer = getattr(self, what)[:, t, :]  # (M, L)
        w = torch.tensor(self.widths[1:-1], dtype=torch.float64)
        return (per_layer * w).sum(dim=1) / w.sum()

    def module(self, i: int) -> MLP:
        """Member ``i`` as a trained ``MLP`` (a fresh module holding copies of its weights)."""
        m = MLP(self.widths, get(self.members[i].activation) or "relu")
        m.load_state_dict({k: v[i].detach().clone() for k, v in self.state.items()})
        return m


# --------------------------------------------------------------------------------------
# Building members
# --------------------------------------------------------------------------------------


def _init_linear(lin: nn.Linear, how: str) -> None:
    if how == "torch":
        return
    fan_in = lin.weight.shape[1]
    if how == "he":
        std = math.sqrt(2.0 / fan_in)
    elif how == "lecun":
        std = math.sqrt(1.0 / fan_in)
    else:
        raise ValueError(f"unknown init {how!r}; choose 'he', 'lecun' or 'torch'")
    with torch.no_grad():
        lin.weight.normal_(0.0, std)
        lin.bias.zero_()


def build_member(member: Member, widths: Sequence[int]) -> MLP:
    """The member's initial ``MLP``, reproducible from ``member.seed`` alone.

    Uses a forked global RNG seeded with ``member.seed``, so the caller's RNG state is left
    untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(member.seed)
        model = MLP(widths, member.activation)
        for lin in model.linear_layers():
            _init_linear(lin, member.init)
        if member.init_fn is not None:
            member.init_fn(model)
        if member.bias_init is not None:
            with torch.no_grad():
                for lin in model.linear_layers()[:-1]:
                    lin.bias.fill_(member.bias_init)
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
        acts.append(a)
    names = {a.name for a in acts}
    if len(names) > 1:
        raise ValueError(
            f"all members of one call must share the activation name, got {sorted(names)}; "
            "train each activation in its own call"
        )
    if cfg.widths[0] != data.n_features or cfg.widths[-1] != data.n_classes:
        raise ValueError(
            f"widths {cfg.widths} do not fit the dataset {data.name!r} "
            f"({data.n_features} features, {data.n_classes} classes)"
        )
    return acts


def _param_key(act: Activation) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(act.params.items()))


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


def _new_probe(m: int, units: int, device: torch.device) -> _Probe:
    return _Probe(
        active=torch.zeros(m, units, dtype=torch.long, device=device),
        zmin=torch.full((m, units), math.inf, device=device),
        zmax=torch.full((m, units), -math.inf, device=device),
        frozen=torch.ones(m, units, dtype=torch.bool, device=device),
        act_sum=torch.zeros(m, dtype=torch.float64, device=device),
    )


def _accumulate(p: _Probe, z: Tensor, h: Tensor, act: Activation) -> None:
    """``z``, ``h``: ``(m, N, U)`` pre-activations and activations of one probe chunk."""
    p.active += (z > 0).sum(dim=1)
    p.zmin = torch.minimum(p.zmin, z.amin(dim=1))
    p.zmax = torch.maximum(p.zmax, z.amax(dim=1))
    p.frozen &= act.zero_grad(z).all(dim=1)
    p.act_sum += h.sum(dim=(1, 2), dtype=torch.float64)


def _finish(p: _Probe, rows: int, act: Activation) -> dict[str, Tensor]:
    m, units = p.active.shape
    dead = dead_mask(p.active)
    sat = saturated_mask(p.zmin.reshape(-1), p.zmax.reshape(-1), act).view(m, units)
    return {
        "dead_mask": dead,
        "dead": dead.double().mean(dim=1),
        "frozen": p.frozen.double().mean(dim=1),
        "saturated": sat.double().mean(dim=1),
        "mean_act": p.act_sum / (rows * units),
    }


ForwardFn = Callable[[Tensor], tuple[Tensor, list[Tensor], list[Tensor]]]


def _evaluate(
    forward: ForwardFn, m: int, n_hidden: int, data: Dataset, act: Activation, probe: Tensor
) -> dict[str, Any]:
    """Evaluate ``m`` members; ``forward(x (N, D)) -> ((m, N, C), [(m, N, H)], [...])``."""
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
            if probes is None:
                probes = [_new_probe(m, z.shape[-1], z.device) for z in pre]
            for p, z, h in zip(probes, pre, post, strict=True):
                _accumulate(p, z, h, act)
        assert probes is not None and len(probes) == n_hidden
        layers = [_finish(p, probe.shape[0], act) for p in probes]
    return {"acc": acc, "loss": test_loss, "layers": layers}


# --------------------------------------------------------------------------------------
# Batched path
# --------------------------------------------------------------------------------------


@dataclass
class _Group:
    """Members sharing the full activation (name and parameters), trained together.

    Each ``Linear`` is one ``torch.baddbmm`` over the stacked ``(m, out, in)`` weights. The
    activation module is applied to the whole ``(m, N, U)`` tensor when it has no parameters;
    a learnable one (PReLU) runs as ``vmap`` over ``functional_call`` with each member's
    own parameters.
    """

    index: Tensor  # (m,) positions of these members in the call
    act: Activation
    act_modules: list[nn.Module]  # template activation module per hidden layer
    params: dict[str, Tensor]  # stacked MLP parameters, leaf tensors requiring grad
    lr: Tensor  # (m,)
    batches: Tensor  # (steps, m, B)
    kicks: list[tuple[int, Tensor]]  # (step, (m,) kick per member)

    def forward(self, x: Tensor, shared_input: bool) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """``x``: ``(N, D)`` (``shared_input``) or ``(m, N, D)`` -> logits ``(m, N, C)``,
        pre-activations and activations ``[(m, N, H_l)]``."""
        m = int(self.index.shape[0])
        h = x.expand(m, -1, -1) if shared_input else x
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
        models = [build_member(members[i], cfg.widths).to(device) for i in idx]
        params, buffers = stack_module_state(models)
        if buffers:
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
        groups.append(
            _Group(
                index=torch.tensor(idx, device=device),
                act=acts[idx[0]],
                act_modules=act_modules,
                params=params,
                lr=torch.tensor([members[i].lr for i in idx], device=device),
                batches=order,
                kicks=kicks,
            )
        )
    return groups


def _hidden_bias_names(widths: Sequence[int]) -> list[str]:
    return [f"linears.{i}.bias" for i in range(len(widths) - 2)]


def train_batched(members: Sequence[Member], cfg: TrainConfig, data: Dataset) -> TrainResult:
    """Train every member at once (vmap over stacked parameters); see the module docstring.

    Args:
        members: the ``M`` members (same activation name; parameters may differ).
        cfg: shared architecture and schedule.
        data: the dataset; its device is used.

    Returns:
        The members' curves, in the order of ``members``.
    """
    acts = _check(members, cfg, data)
    device = data.x_train.device
    groups = _make_groups(members, acts, cfg, data.x_train.shape[0], device)
    probe = data.x_train if cfg.probe_limit is None else data.x_train[: cfg.probe_limit]
    rec = _Recorder(len(members), cfg, device)
    bias_names = _hidden_bias_names(cfg.widths)
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
            logits, _, _ = g.forward(x, shared_input=False)
            per = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none"
            ).view(rows.shape)
            member_loss = per.mean(dim=1)  # (m,)
            grads = torch.autograd.grad(member_loss.sum(), list(g.params.values()))
            with torch.no_grad():
                for p, gr in zip(g.params.values(), grads, strict=True):
                    p.addcmul_(g.lr.view(-1, *([1] * (p.dim() - 1))), gr, value=-1.0)
                loss_sum.index_add_(0, g.index, member_loss.detach().double())
        loss_n += 1

    state: dict[str, Tensor] = {}
    for name in groups[0].params:
        full = torch.empty(
            (len(members), *groups[0].params[name].shape[1:]),
            dtype=groups[0].params[name].dtype,
            device=device,
        )
        for g in groups:
            full[g.index] = g.params[name].detach()
        state[name] = full
    return rec.result(list(members), state, cfg.widths)


# --------------------------------------------------------------------------------------
# Sequential reference
# --------------------------------------------------------------------------------------


#: ``on_step(step, model, optimizer)``: called by :func:`train_sequential` after each SGD
#: step (``step`` counts completed steps, from 1); may change the model in place.
StepHook = Callable[[int, "MLP", torch.optim.Optimizer], None]


def train_sequential(
    members: Sequence[Member],
    cfg: TrainConfig,
    data: Dataset,
    on_step: StepHook | None = None,
) -> TrainResult:
    """Train the members one after the other with plain modules and ``torch.optim.SGD``.

    Same members, batches, kicks and evaluation as :func:`train_batched`; the reference the
    batched path is tested against. ``on_step(step, model, optimizer)``, when given, runs
    after every SGD step (e.g. ReDo recycling, which changes one model at a time).
    """
    acts = _check(members, cfg, data)
    device = data.x_train.device
    probe = data.x_train if cfg.probe_limit is None else data.x_train[: cfg.probe_limit]
    rec = _Recorder(len(members), cfg, device)
    eval_at = set(cfg.eval_steps())
    final: list[dict[str, Tensor]] = []
    for i, (member, act) in enumerate(zip(members, acts, strict=True)):
        model = build_member(member, cfg.widths).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=member.lr)
        order = _batch_order(member.seed, data.x_train.shape[0], cfg.steps, cfg.batch_size)
        index = torch.tensor([i], device=device)
        loss_sum, loss_n = 0.0, 0

        def fwd(x: Tensor, model: MLP = model) -> tuple[Tensor, list[Tensor], list[Tensor]]:
            logits, pre, post = model(x)
            return logits[None], [z[None] for z in pre], [h[None] for h in post]

        for step in range(cfg.steps + 1):
            if member.bias_kick != 0 and step == member.kick_step:
                with torch.no_grad():
                    for lin in model.linear_layers()[:-1]:
                        lin.bias.add_(member.bias_kick)
            if step in eval_at:
                ev = _evaluate(fwd, 1, len(cfg.widths) - 2, data, act, probe)
                rec.store(step, index, ev)
                tl = torch.tensor([loss_sum / loss_n], dtype=torch.float64) if loss_n else None
                rec.store_train_loss(step, tl, index)
                loss_sum, loss_n = 0.0, 0
            if step == cfg.steps:
                break
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
    return rec.result(list(members), state, cfg.widths)


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
        self, members: list[Member], state: dict[str, Tensor], widths: tuple[int, ...]
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
            widths=widths,
        )
