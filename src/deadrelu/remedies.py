"""Cures for dead units: swap the activation, re-initialise biases or weights, recycle units.

Every remedy changes the model in place (keeping devices and dtypes) and returns a
:class:`RemedySummary` of exactly what it changed and what it skipped, with the reason;
none changes anything it was not asked to.

* :func:`swap_activations`: replace ReLU-like activations by another one of the registry
  (the notes' C8/C9: "don't use ReLU, use a variant").
* :func:`init_bias_`: set the bias feeding each ReLU-like activation to a small positive
  value (the notes' C7).
* :func:`rai_init_`: randomized asymmetric initialization (Lu, Shin, Su, Karniadakis 2019).
* :func:`recycle`: ReDo (Sokar et al. 2023): re-initialise dormant units without changing
  the network's function.

How layers are found: :func:`deadrelu.graph.link_sites` traces the model with ``torch.fx``
and links each activation site (named as :mod:`deadrelu.capture` names it) to

* its **producer**: the ``nn.Linear`` / ``nn.Conv1d/2d/3d`` whose output feeds it, through
  at most one ``BatchNorm`` (the **norm**) and any Dropout / Identity;
* its **consumers**: the Linear / Conv layers that read its output, through Dropout,
  Identity, pooling, BatchNorm, other activations and one flatten (``Conv -> ReLU ->
  flatten -> Linear``: the channel's block of columns).

A site whose output reaches anything else (a residual addition, a concatenation, the
model's output) has no complete set of consumers: :func:`recycle` skips it and says why.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from deadrelu.activations import Activation, ActivationSpec, get, make_module, names
from deadrelu.classify import dormant_mask
from deadrelu.graph import SiteLinks, get_or_none, link_sites, site_names, trace

__all__ = [
    "RemedySummary",
    "init_bias_",
    "rai_init_",
    "rai_sample",
    "recycle",
    "suggest",
    "swap_activations",
]

Where = str | Sequence[str] | Callable[[str, Activation], bool] | None


@dataclass
class RemedySummary:
    """What a remedy did.

    Attributes:
        remedy: the function's name.
        changed: one line per change, e.g. ``"fc1.bias: 16 values set to 0.01"``.
        skipped: one line per site or layer left alone, with the reason.
        units: site -> unit indices acted on (for :func:`recycle`).
        model: the model to use from now on: the same object, except after
            :func:`swap_activations` rewrote functional calls (then a ``torch.fx``
            ``GraphModule`` sharing the original's parameters).
        manual: call sites the user must change by hand (file, line and code).
    """

    remedy: str
    changed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    units: dict[str, list[int]] = field(default_factory=dict)
    model: nn.Module | None = None
    manual: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (without the model)."""
        return {
            "remedy": self.remedy,
            "changed": list(self.changed),
            "skipped": list(self.skipped),
            "units": {k: list(v) for k, v in self.units.items()},
            "manual": list(self.manual),
        }

    def __str__(self) -> str:
        lines = [f"{self.remedy}: {len(self.changed)} change(s)"]
        lines += [f"  changed: {c}" for c in self.changed]
        lines += [f"  skipped: {s}" for s in self.skipped]
        lines += [f"  change by hand: {m}" for m in self.manual]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The site graph
# --------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------
# Selecting sites
# --------------------------------------------------------------------------------------


def _relu_like(act: Activation) -> bool:
    """True when f'(z) is exactly 0 for z < 0 (ReLU, ReLU6, leaky with slope 0, ...)."""
    return bool(act.zero_grad(torch.tensor([-1.0], dtype=torch.float64))[0])


def _selector(where: Where) -> Callable[[str, Activation], bool]:
    if where is None:
        return lambda _site, act: _relu_like(act)
    if callable(where):
        return where
    patterns = [where] if isinstance(where, str) else list(where)
    known = set(names())

    def pick(site: str, act: Activation) -> bool:
        for p in patterns:
            if p in known and act.name == p:
                return True
            if fnmatch.fnmatchcase(site, p):
                return True
        return False

    return pick


# --------------------------------------------------------------------------------------
# swap_activations
# --------------------------------------------------------------------------------------


def _device_dtype(module: nn.Module, fallback: nn.Module) -> tuple[torch.device, torch.dtype]:
    for m in (module, fallback):
        for t in list(m.parameters()) + list(m.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def swap_activations(
    model: nn.Module, to: str | Activation = "leaky_relu(0.01)", where: Where = None
) -> RemedySummary:
    """Replace activations by ``to``, in place; functional calls through ``torch.fx``.

    Args:
        model: the model; its activation modules are replaced in place (each new module on
            the old one's device and dtype, in the same train/eval mode; one shared
            instance stays shared).
        to: the new activation, anything :func:`deadrelu.activations.get` accepts.
        where: which sites: ``None`` = every ReLU-like one (f' = 0 for z < 0); a registry
            name (``"relu"``), a site name or :mod:`fnmatch` pattern (``"features.*"``), a
            list of those, or ``where(site, activation) -> bool``.

    Returns:
        A :class:`RemedySummary`. Functional calls (``F.relu(x)`` in a ``forward``) cannot
        be changed in place: when the model can be traced they are rewritten into calls of
        new modules in a ``torch.fx.GraphModule``, returned as ``summary.model`` (use it
        instead of ``model``; it shares the parameters). When it cannot be traced, each
        call is listed in ``summary.manual`` with its file, line and code. The
        ``GraphModule`` has the original's submodules and parameters but not its other
        Python attributes or methods.
    """
    new_act = get(to)
    if new_act is None:
        raise ValueError("swap_activations needs a target activation, got None")
    pick = _selector(where)
    summary = RemedySummary("swap_activations", model=model)
    replaced: dict[int, nn.Module] = {}
    root_device, root_dtype = _device_dtype(model, model)
    for path, module in list(model.named_modules(remove_duplicate=False)):
        if not path:
            continue
        act = get_or_none(module)
        if act is None or not pick(path, act):
            continue
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        new = replaced.get(id(module))
        if new is None:
            device, dtype = _device_dtype(module, parent)
            if device == torch.device("cpu") and not list(module.parameters()):
                device, dtype = root_device, root_dtype
            new = make_module(new_act).to(device=device, dtype=dtype)
            new.train(module.training)
            replaced[id(module)] = new
        setattr(parent, attr, new)
        summary.changed.append(f"{path}: {act} -> {new_act}")

    # functional call sites
    try:
        gm = trace(model)
    except ValueError as exc:
        summary.manual.extend(_functional_calls_by_source(model, pick, new_act))
        if summary.manual:
            summary.skipped.append(f"functional calls not rewritten: {exc}")
        return summary
    rewritten = 0
    for node, (site, spec) in site_names(gm).items():
        if node.op == "call_module":
            continue
        act = spec.bind()
        if not pick(site, act):
            continue
        x = node.args[0]
        if not isinstance(x, fx.Node):
            summary.skipped.append(f"{site}: its input is not a traced tensor")
            continue
        fname = str(getattr(node.target, "__name__", node.target))
        inplace = fname.endswith("_") or bool(node.kwargs.get("inplace"))
        inplace = inplace or any(a is True for a in node.args[1:])
        if inplace and len(x.users) > 1:
            summary.skipped.append(
                f"{site}: in-place call whose input is also used elsewhere; change it by hand"
            )
            continue
        name = f"swapped_{node.name}"
        device, dtype = root_device, root_dtype
        gm.add_submodule(name, make_module(new_act).to(device=device, dtype=dtype))
        with gm.graph.inserting_after(node):
            new_node = gm.graph.call_module(name, (x,))
        node.replace_all_uses_with(new_node)
        gm.graph.erase_node(node)
        summary.changed.append(f"{site}: {act.name}() call -> module {name!r} ({new_act})")
        rewritten += 1
    if rewritten:
        gm.graph.lint()
        gm.recompile()
        summary.model = gm
        summary.skipped.append(
            "functional calls were rewritten in a torch.fx GraphModule: use summary.model"
        )
    return summary


def _functional_calls_by_source(
    model: nn.Module, pick: Callable[[str, Activation], bool], new_act: Activation
) -> list[str]:
    """``file:line: code`` of every functional activation call in the model's forwards."""
    import ast

    fn_names: dict[str, ActivationSpec] = {}
    for name in names():
        act = get(name)
        assert act is not None
        for f in act.spec.torch_functions:
            fn_names[f.__name__] = act.spec
        for meth in act.spec.tensor_methods:
            fn_names[meth] = act.spec
    out: list[str] = []
    seen: set[type] = set()
    for path, module in model.named_modules():
        cls = type(module)
        if cls in seen or cls.__module__.startswith("torch.") or get_or_none(module) is not None:
            continue
        seen.add(cls)
        try:
            lines, start = inspect.getsourcelines(cls.forward)
            file = inspect.getsourcefile(cls.forward) or "?"
        except (OSError, TypeError):
            continue
        source = textwrap.dedent("".join(lines))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            func = call.func
            fname = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else None
            )
            if fname is None or fname not in fn_names:
                continue
            spec = fn_names[fname]
            site = f"{path}:{spec.name}"
            if not pick(site, spec.bind()):
                continue
            line = start + call.lineno - 1
            code = lines[call.lineno - 1].strip()
            out.append(
                f"{file}:{line}: `{code}` -> call a module instead, e.g. "
                f"self.act = deadrelu.make_module({str(new_act)!r}) and self.act(...)"
            )
    return out


# --------------------------------------------------------------------------------------
# init_bias_
# --------------------------------------------------------------------------------------


def _selected_links(model: nn.Module, where: Where) -> list[SiteLinks]:
    pick = _selector(where)
    return [lk for lk in link_sites(model).values() if pick(lk.site, lk.activation)]


@torch.no_grad()
def init_bias_(model: nn.Module, value: float = 0.01, where: Where = None) -> RemedySummary:
    """Set the bias feeding each selected activation to ``value`` (the notes' C7: 0.01).

    The bias that shifts z is the producer's (``Linear``/``Conv``), or, when a BatchNorm
    sits between, the BatchNorm's ``bias`` (beta): BN removes the producer's bias.
    ``where`` selects sites as in :func:`swap_activations` (default: ReLU-like ones).
    Layers without a bias are skipped and listed.
    """
    summary = RemedySummary("init_bias_", model=model)
    done: set[str] = set()
    for lk in _selected_links(model, where):
        target = lk.norm or lk.producer
        if target is None:
            summary.skipped.append(f"{lk.site}: {lk.producer_problem}")
            continue
        if target in done:
            continue
        layer = model.get_submodule(target)
        bias = getattr(layer, "bias", None)
        if not isinstance(bias, Tensor):
            summary.skipped.append(
                f"{lk.site}: {target!r} ({type(layer).__name__}) has no bias; create it with "
                "bias=True (or add a BatchNorm) to use init_bias_"
            )
            continue
        bias.fill_(value)
        done.add(target)
        summary.changed.append(f"{target}.bias: {bias.numel()} values set to {value} ({lk.site})")
    return summary


# --------------------------------------------------------------------------------------
# RAI
# --------------------------------------------------------------------------------------

#: sigma of the symmetric part of RAI with P = Beta(2, 1) (Lu et al. 2019; 0.6007).
RAI_SIGMA = 0.6007


def rai_sample(
    rows: int,
    fan_in: int,
    *,
    bias: bool = True,
    sigma: float = RAI_SIGMA,
    batch: Sequence[int] = (),
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor | None]:
    """Draw RAI weights ``(*batch, rows, fan_in)`` and biases ``(*batch, rows)`` (or None).

    For each unit (row), the ``fan_in`` weights and the bias are drawn i.i.d. from
    N(0, sigma^2 / fan_in); then one of these ``fan_in + 1`` entries, chosen uniformly at
    random, is replaced by a draw from Beta(2, 1) (positive; sampled as sqrt(U), U uniform),
    which makes the unit's parameter vector asymmetric. Without a bias only the weights are
    candidates.
    """
    if rows < 1 or fan_in < 1:
        raise ValueError(f"rai_sample needs rows >= 1 and fan_in >= 1, got {rows}, {fan_in}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    width = fan_in + (1 if bias else 0)
    shape = (*batch, rows, width)
    v = torch.randn(shape, generator=generator, dtype=dtype) * (sigma / math.sqrt(fan_in))
    k = torch.randint(0, width, (*batch, rows, 1), generator=generator)
    positive = torch.rand((*batch, rows, 1), generator=generator, dtype=dtype).sqrt()
    v.scatter_(-1, k, positive)
    if bias:
        return v[..., :fan_in].contiguous(), v[..., fan_in].contiguous()
    return v, None


@torch.no_grad()
def rai_init_(
    model: nn.Module,
    sigma: float = RAI_SIGMA,
    where: Where = None,
    generator: torch.Generator | None = None,
) -> RemedySummary:
    """Randomized asymmetric initialization of the layers feeding ReLU-like activations.

    Lu, Shin, Su, Karniadakis, "Dying ReLU and Initialization: Theory and Numerical
    Examples", Communications in Computational Physics 28(5), 2020 (arXiv:1903.06733),
    Sec. 5: for each unit, its incoming weights and bias are drawn from a symmetric
    distribution, N(0, sigma^2 / fan_in), and then one of them, chosen uniformly at
    random, is re-drawn from an asymmetric positive distribution, Beta(2, 1). The paper
    designs sigma from a second-moment analysis so that activations neither vanish nor
    explode; with P = Beta(2, 1) this gives sigma = 0.6007 (:data:`RAI_SIGMA`), the
    default here. (Checked against the issue's recipe and a public implementation that
    cites the paper, sigma 0.6007 with Beta(2, 1) and N(0, sigma^2 / fan_in); the paper's
    own text was not available when this was written: check the fan-in convention, fan_in
    or fan_in + 1, against its Sec. 5 before quoting numbers.)

    For a Conv layer the unit is an output channel and its fan-in ``C_in/groups * k...``.
    ``where`` selects sites as in :func:`swap_activations`; producers reused by several
    sites are initialised once.
    """
    summary = RemedySummary("rai_init_", model=model)
    done: set[str] = set()
    for lk in _selected_links(model, where):
        if lk.producer is None:
            summary.skipped.append(f"{lk.site}: {lk.producer_problem}")
            continue
        if lk.producer in done:
            continue
        layer = model.get_submodule(lk.producer)
        weight = _param(layer, "weight")
        bias_p = getattr(layer, "bias", None)
        bias_p = bias_p if isinstance(bias_p, Tensor) else None
        rows = weight.shape[0]
        fan_in = weight[0].numel()
        w, b = rai_sample(rows, fan_in, bias=bias_p is not None, sigma=sigma, generator=generator)
        weight.copy_(w.reshape(weight.shape).to(weight.dtype))
        if bias_p is not None and b is not None:
            bias_p.copy_(b.to(bias_p.dtype))
        done.add(lk.producer)
        summary.changed.append(
            f"{lk.producer}: RAI weights ({rows} units, fan-in {fan_in}, sigma {sigma})"
            + (" and bias" if bias_p is not None else "")
        )
        if lk.norm is not None:
            summary.skipped.append(
                f"{lk.site}: BatchNorm {lk.norm!r} follows {lk.producer!r} and normalises "
                "away RAI's asymmetry"
            )
    return summary


# --------------------------------------------------------------------------------------
# recycle (ReDo)
# --------------------------------------------------------------------------------------


def _masks_from(source: Any, tau: float | None) -> dict[str, Tensor]:
    """Dormant masks ``{site: (U,) bool}`` from a dict, a Report or a Monitor."""
    if isinstance(source, Mapping):
        out: dict[str, Tensor] = {}
        for site, m in source.items():
            t = torch.as_tensor(m)
            if t.dtype != torch.bool:
                raise ValueError(
                    f"recycle: the mask of {site!r} must be bool (U,), got {t.dtype}; "
                    "pass {site: tensor_of_bools}"
                )
            out[str(site)] = t.flatten()
        return out
    report = source
    if not hasattr(report, "stats") and callable(getattr(report, "report", None)):
        report = report.report()  # a Monitor
    stats = getattr(report, "stats", None)
    if isinstance(stats, Mapping) and callable(getattr(report, "masks", None)):
        if tau is None or tau == getattr(report, "tau", None):
            return {site: report.masks(site)["dormant"] for site in stats}
        return {site: dormant_mask(s.mean_abs.cpu(), tau) for site, s in stats.items()}
    raise TypeError(
        "recycle: pass a Report, a Monitor or a dict {site: (U,) bool mask}; got "
        f"{type(source).__name__}"
    )


@torch.no_grad()
def recycle(
    model: nn.Module,
    dormant: Any,
    optimizer: torch.optim.Optimizer | None = None,
    tau: float | None = None,
    *,
    generator: torch.Generator | None = None,
) -> RemedySummary:
    """ReDo: re-initialise dormant units without changing the network's outputs.

    Sokar, Agarwal, Castro, Evci, "The Dormant Neuron Phenomenon in Deep Reinforcement
    Learning", ICML 2023, Sec. 4 (ReDo). For each dormant unit of a site:

    * its incoming weights (the producer's row, a Conv's output channel) are re-drawn
      from the layer's default initialisation (``kaiming_uniform_(a=sqrt(5))``, what
      ``nn.Linear``/``nn.Conv*`` use) and its bias is set to 0;
    * a BatchNorm between producer and activation gets, for that channel, weight 1,
      bias 0, running mean 0 and running variance 1;
    * its outgoing weights (the consumers' columns: input features of a Linear, input
      channels of a Conv, the channel's block of columns after a flatten) are set to 0,
      so the network computes the same function right after recycling;
    * with ``optimizer``, every per-parameter state tensor shaped like a touched parameter
      (Adam's ``exp_avg`` and ``exp_avg_sq``, SGD's ``momentum_buffer``) is zeroed at the
      touched rows and columns.

    Args:
        model: the model, changed in place.
        dormant: a ``Report`` or ``Monitor`` (dormant = ReDo score <= ``tau``, see
            :func:`deadrelu.classify.dormant_mask`) or a dict ``{site: (U,) bool mask}``.
        optimizer: its state is reset for the touched entries (optional).
        tau: the ReDo threshold when ``dormant`` is a Report or Monitor (default: the
            report's own, :data:`deadrelu.classify.DORMANT_TAU` = 0.025 unless changed).
        generator: random generator for the new weights (default: torch's global one).

    Sites whose output reaches the model's output (the output layer), a residual
    addition, or anything but Linear/Conv layers are skipped, with the reason, in
    ``summary.skipped``.
    """
    masks = _masks_from(dormant, tau)
    links = link_sites(model)
    summary = RemedySummary("recycle", model=model)
    touched: list[tuple[Tensor, str, Tensor]] = []  # (param, "rows"|"cols", index mask)
    for site, mask in masks.items():
        if not bool(mask.any()):
            continue
        lk = links.get(site)
        if lk is None:
            summary.skipped.append(f"{site}: no such activation site in the model")
            continue
        problem = lk.producer_problem or lk.consumer_problem
        if problem is not None or lk.producer is None:
            summary.skipped.append(f"{site}: not recycled: {problem}")
            continue
        producer = model.get_submodule(lk.producer)
        pw = _param(producer, "weight")
        pb = getattr(producer, "bias", None)
        units = pw.shape[0]
        if mask.numel() != units:
            summary.skipped.append(
                f"{site}: mask has {mask.numel()} units but {lk.producer!r} has {units}"
            )
            continue
        mask = mask.to(pw.device)
        idx = torch.nonzero(mask).flatten()
        fresh = torch.empty_like(pw)
        nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
        pw[idx] = fresh[idx]
        touched.append((pw, "rows", idx))
        if isinstance(pb, Tensor):
            pb[idx] = 0.0
            touched.append((pb, "rows", idx))
        changed = [f"rows of {lk.producer!r} re-initialised, bias 0"]
        if lk.norm is not None:
            bn = model.get_submodule(lk.norm)
            assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
            if isinstance(bn.weight, Tensor):
                bn.weight[idx] = 1.0
                touched.append((bn.weight, "rows", idx))
            if isinstance(bn.bias, Tensor):
                bn.bias[idx] = 0.0
                touched.append((bn.bias, "rows", idx))
            if bn.running_mean is not None and bn.running_var is not None:
                bn.running_mean[idx] = 0.0
                bn.running_var[idx] = 1.0
            changed.append(f"channels of {lk.norm!r} reset")
        for path, kind in lk.consumers:
            w = _param(model.get_submodule(path), "weight")
            if kind == "flatten_linear":
                in_f = w.shape[1]
                if in_f % units:
                    raise ValueError(
                        f"recycle: {path!r} reads a flatten of {site!r} but its "
                        f"{in_f} inputs are not a multiple of the {units} channels"
                    )
                block = in_f // units
                if block > 1 and isinstance(producer, nn.Linear):
                    raise ValueError(
                        f"recycle: {path!r} reads a flatten of the (N, *, {units}) output of "
                        f"Linear {lk.producer!r}: its columns are not one block per unit"
                    )
                cols = (idx[:, None] * block + torch.arange(block, device=idx.device)).flatten()
            else:
                cols = idx
            w[:, cols] = 0.0
            touched.append((w, "cols", cols))
            changed.append(f"columns of {path!r} zeroed ({kind})")
        summary.units[site] = [int(i) for i in idx.cpu()]
        summary.changed.append(f"{site}: {idx.numel()} unit(s) recycled: " + "; ".join(changed))
    if optimizer is not None:
        n_reset = _reset_optimizer(optimizer, touched)
        if touched:
            summary.changed.append(f"optimizer: {n_reset} state tensor(s) reset at touched entries")
    return summary


def _param(layer: nn.Module, name: str) -> Tensor:
    t = getattr(layer, name, None)
    if not isinstance(t, Tensor):
        raise ValueError(f"{type(layer).__name__} has no tensor {name!r}")
    return t


def _reset_optimizer(
    optimizer: torch.optim.Optimizer, touched: Iterable[tuple[Tensor, str, Tensor]]
) -> int:
    count = 0
    for param, kind, idx in touched:
        state = optimizer.state.get(param)
        if not state:
            continue
        for value in state.values():
            if isinstance(value, Tensor) and value.shape == param.shape and value.dim() > 0:
                if kind == "rows":
                    value[idx] = 0
                else:
                    value[:, idx] = 0
                count += 1
    return count


# --------------------------------------------------------------------------------------
# suggest
# --------------------------------------------------------------------------------------

#: A relative update ||delta w|| / ||w|| above this in one step is "large" (the usual rule
#: of thumb for a healthy step is about 1e-3).
LARGE_UPDATE = 1e-2
#: A site with a larger dead fraction than this gets the "switch activation" advice.
SWITCH_FRACTION = 0.1


def suggest(source: Any, *, model: nn.Module | None = None, data: Any = None) -> list[str]:
    """Plain-language advice from what was measured, each line with the number behind it.

    Args:
        source: a :class:`deadrelu.explain.Explanation` (best: causes and update sizes),
            a ``Report`` or a ``Monitor``.
        model: with a Report or Monitor, explain it first (causes) on this model.
        data: passed to :func:`deadrelu.explain.explain` (re-scan for z_max).

    Returns:
        Lines such as ``"12 units died right after updates of median 80 % of their
        weights (lr 0.5): lower the learning rate by about 80x"``.
    """
    from deadrelu.explain import Explanation, explain

    lines: list[str] = []
    expl: Explanation | None = source if isinstance(source, Explanation) else None
    report = None
    if expl is None:
        report = source
        if not hasattr(report, "stats") and callable(getattr(report, "report", None)):
            report = report.report()
        if model is not None:
            expl = explain(model, source, data)
    if report is not None:
        total = sum(int(st.units) for st in report.stats.values())
        dead_by_site = {s: len(report.dead_units(s)) for s in report.stats}
        if expl is not None:  # a Monitor's own window definition
            dead_by_site = {s: 0 for s in report.stats}
            for u in expl.units:
                dead_by_site[u.site] = dead_by_site.get(u.site, 0) + 1
        n_dead = sum(dead_by_site.values())
        if n_dead == 0:
            return [f"no dead units among {total}: nothing to cure"]
        lines.append(f"{n_dead} of {total} units are dead ({n_dead / max(total, 1):.1%})")
        for s, k in dead_by_site.items():
            units = int(report.stats[s].units)
            if units and k / units > SWITCH_FRACTION:
                lines.append(
                    f"{s}: {k} of {units} units dead ({k / units:.0%} > "
                    f"{SWITCH_FRACTION:.0%}): swap_activations(model, 'leaky_relu(0.01)') "
                    "keeps a gradient (slope 0.01) where z < 0"
                )
    if expl is None:
        if not lines:
            lines.append("pass model= (or an Explanation) for causes and cures")
        return lines
    if report is None:
        lines.append(f"{len(expl.units)} dead unit(s) explained")
    big = [u for u in expl.units if u.update_ratio is not None and u.update_ratio > LARGE_UPDATE]
    if big:
        ratios = sorted(u.update_ratio for u in big if u.update_ratio is not None)
        med = ratios[len(ratios) // 2]
        lrs = sorted({u.lr for u in big if u.lr is not None})
        factor = max(2, math.ceil(med / LARGE_UPDATE))
        lines.append(
            f"{len(big)} unit(s) died right after updates of median {med:.0%} of their "
            f"weights (lr {', '.join(f'{lr:.3g}' for lr in lrs)}); steps above "
            f"{LARGE_UPDATE:.0%} are large: lower the learning rate by about {factor}x "
            "(or warm it up / clip gradients)"
        )
    by_bias = [u for u in expl.units if u.cause == "bias"]
    if by_bias:
        b = sorted(u.bias for u in by_bias if u.bias is not None)
        lines.append(
            f"{len(by_bias)} unit(s) are held below 0 by their bias alone (median b = "
            f"{b[len(b) // 2]:.3g}; the weights would activate them): init_bias_(model, 0.01) "
            "or recycle(model, report, optimizer)"
        )
    by_w = [u for u in expl.units if u.cause in ("weights", "both")]
    if by_w:
        lines.append(
            f"{len(by_w)} unit(s) have w.x <= 0 on all the data (cause weights or both): "
            "recycle(model, report, optimizer) re-initialises them without changing outputs"
        )
    born = [u for u in expl.units if u.died_at == 0]
    if born:
        lines.append(
            f"{len(born)} unit(s) were dead from the first step: rai_init_(model) or "
            "init_bias_(model, 0.01) before training"
        )
    revived = sum(len(v) for v in expl.revived.values())
    if revived:
        lines.append(
            f"{revived} unit(s) died and later came back: dead units can revive when the "
            "layers before them change"
        )
    return lines
