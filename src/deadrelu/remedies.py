"""Cures for dead units: swap the activation, re-initialise biases, recycle units.

Every remedy changes the model in place (keeping devices and dtypes) and returns a
:class:`RemedySummary` of exactly what it changed and what it skipped, with the reason;
none changes anything it was not asked to, and none says "nothing to do" silently: a site
of the kind asked for that is left alone is listed in ``skipped`` with the reason.

* :func:`swap_activations`: replace ReLU-like activations by another one of the registry
  (the notes' C8/C9: "don't use ReLU, use a variant").
* :func:`init_bias_`: set the bias feeding each ReLU-like activation (or only the given
  units) to a small positive value (the notes' C7).
* :func:`recycle`: ReDo (Sokar et al. 2023): re-initialise dead units without changing the
  network's outputs.

Whole-model initialisers (:func:`deadrelu.init.rai_init_`, :func:`deadrelu.init.init_for`)
live in :mod:`deadrelu.init`; advice on which cure to use in :mod:`deadrelu.advice`.

How layers are found (:func:`links_of`): each activation site (named as
:mod:`deadrelu.capture` names it) is linked to its **producer** (the ``nn.Linear`` /
``nn.Conv1d/2d/3d`` whose output feeds it, through at most one ``BatchNorm``, the **norm**,
and any Dropout / Identity) and its **consumers** (the Linear / Conv layers that read its
output, through Dropout, Identity, pooling, BatchNorm, other activations and one flatten:
``Conv -> ReLU -> flatten -> Linear`` reads the channel's block of columns). With example
inputs this is measured by one probe forward (:class:`deadrelu.graph.LinkProbe`: what
really ran, for any model, Hugging Face ones included); without, by tracing with
``torch.fx`` (:func:`deadrelu.graph.link_sites`: every branch, for traceable models). A
site whose output reaches anything else (a residual addition, a concatenation, the
model's output) has no complete set of consumers: :func:`recycle` skips it and says why.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import inspect
import math
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from deadrelu.activations import (
    Activation,
    ActivationSpec,
    get,
    make_module,
    names,
    spec_for_function,
)
from deadrelu.batches import first_batch, run_batch
from deadrelu.capture import attach
from deadrelu.classify import dormant_mask
from deadrelu.graph import (
    LinkProbe,
    SiteLinks,
    fsdp1_modules,
    get_or_none,
    link_sites,
    plain_name,
    site_names,
    submodule,
    trace,
)
from deadrelu.scan import scan

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # torch built without distributed: no DTensor can occur

    class DTensor:  # type: ignore[no-redef]
        """Stand-in: nothing is an instance."""

    distribute_tensor = None  # type: ignore[assignment]

__all__ = [
    "RemedySummary",
    "Where",
    "init_bias_",
    "links_of",
    "recycle",
    "select",
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
        units: site -> unit indices acted on (:func:`recycle`, :func:`init_bias_` with
            ``units=``).
        model: the model to use from now on: the same object, except after
            :func:`swap_activations` rewrote functional calls (then a ``torch.fx``
            ``GraphModule`` sharing the original's parameters).
        manual: call sites the user must change by hand (file, line and code).
        max_output_change: largest ``|output after - output before|`` over the example
            batch (:func:`recycle` with ``data=`` or ``example_inputs=``), else None.
        still_dead: site -> units acted on that a fresh scan of ``data`` still finds dead
            (:func:`recycle` with ``data=``).
    """

    remedy: str
    changed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    units: dict[str, list[int]] = field(default_factory=dict)
    model: nn.Module | None = None
    manual: list[str] = field(default_factory=list)
    max_output_change: float | None = None
    still_dead: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (without the model)."""
        return {
            "remedy": self.remedy,
            "changed": list(self.changed),
            "skipped": list(self.skipped),
            "units": {k: list(v) for k, v in self.units.items()},
            "manual": list(self.manual),
            "max_output_change": self.max_output_change,
            "still_dead": {k: list(v) for k, v in self.still_dead.items()},
        }

    def __str__(self) -> str:
        lines = [f"{self.remedy}: {len(self.changed)} change(s)"]
        lines += [f"  changed: {c}" for c in self.changed]
        lines += [f"  skipped: {s}" for s in self.skipped]
        lines += [f"  change by hand: {m}" for m in self.manual]
        if self.max_output_change is not None:
            lines.append(f"  max output change on the example batch: {self.max_output_change:.3g}")
        for site, idx in self.still_dead.items():
            lines.append(f"  still dead in a fresh scan: {site}: {idx}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Batches, links, selecting sites
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _in_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``torch.no_grad()`` inside; every module's mode restored after."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def links_of(
    model: nn.Module, example_inputs: Any = None, *, remedy: str = "links_of"
) -> dict[str, SiteLinks]:
    """Producer and consumers of every activation site (see the module docstring).

    Args:
        model: the model.
        example_inputs: one batch (a tensor, ``(x, y)``, or a dict of keyword arguments
            as for ``model(**batch)``): links measured by one probe forward in eval mode
            under ``torch.no_grad()`` (modes restored; BatchNorm statistics untouched).
            None: traced with ``torch.fx``.
        remedy: the caller's name, for error messages.

    Raises:
        ValueError: the model cannot be traced and no ``example_inputs`` were given.
    """
    if example_inputs is None:
        try:
            return link_sites(model)
        except ValueError as exc:
            raise ValueError(
                f"{remedy}: {type(model).__name__} cannot be traced with torch.fx, so its "
                "layers are linked by one probe forward: pass example_inputs= (one batch: a "
                "tensor, an (x, y) tuple, or a dict of keyword arguments as for "
                f"model(**batch)). Tracing said: {exc.__cause__ or exc}"
            ) from exc
    with _in_eval(model), LinkProbe(model) as probe, attach(model, probe.on_site):
        run_batch(model, example_inputs)
    return probe.links()


def _relu_like(act: Activation) -> bool:
    """True when f'(z) is exactly 0 for z < 0 (ReLU, ReLU6, leaky with slope 0, ...)."""
    return bool(act.zero_grad(torch.tensor([-1.0], dtype=torch.float64))[0])


def select(where: Where) -> Callable[[str, Activation], bool]:
    """``where`` as a predicate ``pick(site, activation) -> bool``: ``None`` = every
    ReLU-like site (f' = 0 for z < 0); a registry name (``"relu"``), a site name or
    :mod:`fnmatch` pattern (``"features.*"``), a list of those, or a callable."""
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


def _no_sites(remedy: str, links: Mapping[str, SiteLinks], where: Where) -> str:
    seen = ", ".join(sorted({str(lk.activation) for lk in links.values()})) or "none"
    return (
        f"{remedy}: no activation site matches where={where!r} (activations seen: {seen}); "
        "with a model torch.fx traces only in part, pass example_inputs= to find every call"
    )


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
    model: nn.Module,
    to: str | Activation = "leaky_relu(0.01)",
    where: Where = None,
    *,
    example_inputs: Any = None,
) -> RemedySummary:
    """Replace activations by ``to``, in place; functional calls through ``torch.fx``.

    Three kinds of activation are replaced:

    * **modules** (``nn.ReLU`` ...), in place (each new module on the old one's device and
      dtype, in the same train/eval mode; one shared instance stays shared);
    * **function attributes**: a module that keeps an activation *function* as an
      attribute (``nn.TransformerEncoderLayer(activation="relu")`` keeps ``F.relu`` as
      ``layer.activation``) gets a module of ``to`` in that attribute (and
      ``activation_relu_or_gelu = False``, which turns off the layer's fused fast path,
      whose kernel would apply its own ReLU/GELU);
    * **functional calls** (``F.relu(x)`` in a ``forward``): when the model can be traced
      they are rewritten into calls of new modules in a ``torch.fx.GraphModule``, returned
      as ``summary.model`` (use it instead of ``model``; it shares the parameters, but not
      the original's other Python attributes or methods). When it cannot be traced, each
      call is listed in ``summary.manual`` with its file, line and code.

    Args:
        model: the model, changed in place.
        to: the new activation, anything :func:`deadrelu.activations.get` accepts.
        where: which sites (see :func:`select`); default every ReLU-like one.
        example_inputs: one batch; after the swap the model (``summary.model``) runs on it
            once and every selected activation still called is listed in
            ``summary.skipped`` (what no static rule could change).

    Returns:
        A :class:`RemedySummary`.
    """
    new_act = get(to)
    if new_act is None:
        raise ValueError("swap_activations needs a target activation, got None")
    pick = select(where)
    summary = RemedySummary("swap_activations", model=model)
    replaced: dict[int, nn.Module] = {}
    root_device, root_dtype = _device_dtype(model, model)
    for path, module in list(model.named_modules(remove_duplicate=False)):
        if not path:
            continue
        act = get_or_none(module)
        if act is None or not pick(plain_name(path), act):
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
        summary.changed.append(f"{plain_name(path)}: {act} -> {new_act}")
    fresh = set(map(id, replaced.values()))
    fresh |= _swap_function_attributes(model, pick, new_act, summary)
    fresh |= _swap_functional_calls(model, pick, new_act, summary)
    if example_inputs is not None:
        _check_swapped(summary, pick, example_inputs, fresh)
    elif not summary.changed and not summary.manual:
        summary.skipped.append(
            "no selected activation module, function attribute or traced call was found; "
            "pass example_inputs= to check by a forward that none is called"
        )
    return summary


def _swap_function_attributes(
    model: nn.Module,
    pick: Callable[[str, Activation], bool],
    new_act: Activation,
    summary: RemedySummary,
) -> set[int]:
    """Activation functions kept as module attributes (``layer.activation = F.relu``);
    returns the ids of the new modules."""
    fresh: set[int] = set()
    device, dtype = _device_dtype(model, model)
    for path, module in list(model.named_modules()):
        for attr, value in list(vars(module).items()):
            if attr.startswith("_") or not callable(value) or isinstance(value, nn.Module):
                continue
            try:
                spec = spec_for_function(value)
            except TypeError:  # unhashable callable
                continue
            if spec is None:
                continue
            act = spec.bind()
            if not pick(f"{plain_name(path)}:{spec.name}", act):
                continue
            new = make_module(new_act).to(device=device, dtype=dtype)
            new.train(module.training)
            setattr(module, attr, new)
            fresh.add(id(new))
            if hasattr(module, "activation_relu_or_gelu"):
                module.activation_relu_or_gelu = False
            where = f"{path}.{attr}" if path else attr
            summary.changed.append(f"{where}: function {act.name}() -> module ({new_act})")
    return fresh


def _swap_functional_calls(
    model: nn.Module,
    pick: Callable[[str, Activation], bool],
    new_act: Activation,
    summary: RemedySummary,
) -> set[int]:
    """Rewrite traced functional calls into modules; returns the ids of the new modules."""
    root_device, root_dtype = _device_dtype(model, model)
    try:
        gm = trace(model)
    except ValueError as exc:
        summary.manual.extend(_functional_calls_by_source(model, pick, new_act))
        if summary.manual:
            summary.skipped.append(f"functional calls not rewritten: {exc}")
        return set()
    fresh: set[int] = set()
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
        new = make_module(new_act).to(device=root_device, dtype=root_dtype)
        gm.add_submodule(name, new)
        fresh.add(id(new))
        with gm.graph.inserting_after(node):
            new_node = gm.graph.call_module(name, (x,))
        node.replace_all_uses_with(new_node)
        gm.graph.erase_node(node)
        summary.changed.append(f"{site}: {act.name}() call -> module {name!r} ({new_act})")
    if fresh:
        gm.graph.lint()
        gm.recompile()
        summary.model = gm
        summary.skipped.append(
            "functional calls were rewritten in a torch.fx GraphModule: use summary.model"
        )
    return fresh


def _check_swapped(
    summary: RemedySummary,
    pick: Callable[[str, Activation], bool],
    example_inputs: Any,
    fresh: set[int],
) -> None:
    """Run the swapped model once; list every selected activation still called (the
    modules the swap put in are not)."""
    model = summary.model
    assert model is not None
    new_paths = {plain_name(p) for p, m in model.named_modules() if id(m) in fresh}
    left: dict[str, Activation] = {}

    def on_site(site: Any, z: Tensor, out: Tensor) -> None:
        if site.kind == "module" and site.module in new_paths:
            return
        if pick(site.name, site.activation):
            left.setdefault(site.name, site.activation)

    with attach(model, on_site), torch.no_grad():
        run_batch(model, example_inputs)
    for site, act in left.items():
        summary.skipped.append(
            f"{site}: {act} is still called after the swap (a call no rule could change: "
            "replace it in the model's code)"
        )


def _functional_calls_by_source(
    model: nn.Module, pick: Callable[[str, Activation], bool], new_act: Activation
) -> list[str]:
    """``file:line: code`` of every functional activation call in the model's forwards."""
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
# Which units: from a Report, a Monitor, or a dict
# --------------------------------------------------------------------------------------


def _as_report(source: Any) -> Any:
    """A Report from a Report or a Monitor (``monitor.report()``), else None."""
    if hasattr(source, "stats") and callable(getattr(source, "masks", None)):
        return source
    if callable(getattr(source, "report", None)):
        return source.report()
    return None


def _unit_masks(source: Any, remedy: str, tau: float | None = None) -> dict[str, Tensor]:
    """``{site: units}``: a ``(U,)`` bool mask, or a 1-D int64 tensor of unit indices.

    A dict ``{site: (U,) bool mask or unit indices}`` as given; a Report or Monitor: its
    dead units, or with ``tau`` its dormant units (ReDo score <= ``tau``).
    """
    if isinstance(source, Mapping):
        out: dict[str, Tensor] = {}
        for site, m in source.items():
            t = torch.as_tensor(m).flatten()
            if t.dtype != torch.bool and (t.dtype.is_floating_point or t.dtype.is_complex):
                raise ValueError(
                    f"{remedy}: the units of {site!r} must be a (U,) bool mask or unit "
                    f"indices, got a {t.dtype} tensor"
                )
            out[str(site)] = t if t.dtype == torch.bool else t.long()
        return out
    report = _as_report(source)
    if report is None:
        raise TypeError(
            f"{remedy}: pass a Report, a Monitor or a dict {{site: (U,) bool mask or unit "
            f"indices}}; got {type(source).__name__}"
        )
    if tau is None:
        return {site: report.masks(site)["dead"] for site in report.stats}
    return {site: dormant_mask(st.mean_abs.cpu(), tau) for site, st in report.stats.items()}


def _any(units: Tensor) -> bool:
    return bool(units.any()) if units.dtype == torch.bool else units.numel() > 0


def _check_units(remedy: str, site: str, units: Tensor, size: int, layer: str) -> Tensor:
    """``units`` as a ``(size,)`` bool mask; raises naming both sizes when it cannot be."""
    if units.dtype != torch.bool:
        bad = units[(units < 0) | (units >= size)]
        if bad.numel():
            raise ValueError(
                f"{remedy}: unit {int(bad[0])} of {site!r} is out of range: {layer!r} has "
                f"{size} units; was the report made on another model?"
            )
        mask = torch.zeros(size, dtype=torch.bool)
        mask[units] = True
        return mask
    if units.numel() != size:
        raise ValueError(
            f"{remedy}: the report has {units.numel()} units at {site!r} but {layer!r} has "
            f"{size}; was the report made on another model (or another unit_dim)?"
        )
    return units


def _check_sites(remedy: str, masks: Mapping[str, Tensor], links: Mapping[str, SiteLinks]) -> None:
    """Raise when none of the sites with units to act on is a site of this model."""
    wanted = [s for s, m in masks.items() if _any(m)]
    if wanted and links and not any(s in links for s in wanted):
        raise ValueError(
            f"{remedy}: none of the sites given ({', '.join(wanted[:5])}"
            f"{', ...' if len(wanted) > 5 else ''}) is an activation site of this model "
            f"(its sites: {', '.join(list(links)[:5])}{', ...' if len(links) > 5 else ''}); "
            "was the report made on another model?"
        )


# --------------------------------------------------------------------------------------
# init_bias_
# --------------------------------------------------------------------------------------


@torch.no_grad()
def init_bias_(
    model: nn.Module,
    value: float = 0.01,
    where: Where = None,
    *,
    units: Any = None,
    example_inputs: Any = None,
) -> RemedySummary:
    """Set the bias feeding each selected activation to ``value`` (the notes' C7: 0.01).

    The bias that shifts z is the producer's (``Linear``/``Conv``), or, when a BatchNorm
    sits between, the BatchNorm's ``bias`` (beta): BN removes the producer's bias.
    Layers without a bias are skipped and listed.

    Args:
        model: the model, changed in place.
        value: the new bias, finite.
        where: which sites (see :func:`select`); default every ReLU-like one.
        units: only these units: a Report or Monitor (its dead units) or a dict
            ``{site: (U,) bool mask or unit indices}``. None: every unit of the selected
            sites, i.e. the whole layer (an initialiser: use it before training; on a
            trained model it moves every unit, not only dead ones).
        example_inputs: one batch, to link layers by a probe forward (needed when the model
            cannot be traced with ``torch.fx``, e.g. any Hugging Face model).
    """
    if not math.isfinite(float(value)):
        raise ValueError(f"init_bias_: value must be a finite number, got {value!r}")
    summary = RemedySummary("init_bias_", model=model)
    links = links_of(model, example_inputs, remedy="init_bias_")
    pick = select(where)
    masks = _unit_masks(units, "init_bias_") if units is not None else None
    if masks is not None:
        _check_sites("init_bias_", masks, links)
        for site in masks:
            if site not in links and _any(masks[site]):
                summary.skipped.append(f"{site}: not an activation site found in the model")
    chosen = [lk for lk in links.values() if pick(lk.site, lk.activation)]
    if not chosen:
        summary.skipped.append(_no_sites("init_bias_", links, where))
    done: dict[str, Tensor] = {}
    for lk in chosen:
        target = lk.norm or lk.producer
        if target is None:
            if masks is None or (lk.site in masks and _any(masks[lk.site])):
                summary.skipped.append(f"{lk.site}: {lk.producer_problem}")
            continue
        layer = submodule(model, target)
        bias = getattr(layer, "bias", None)
        if not isinstance(bias, Tensor):
            summary.skipped.append(
                f"{lk.site}: {target!r} ({type(layer).__name__}) has no bias; create it with "
                "bias=True (or add a BatchNorm) to use init_bias_"
            )
            continue
        if masks is None:
            idx = torch.ones(bias.numel(), dtype=torch.bool)
        elif lk.site in masks:
            idx = _check_units("init_bias_", lk.site, masks[lk.site], bias.numel(), target)
        else:
            continue
        if not bool(idx.any()):
            continue
        done[target] = done.get(target, torch.zeros_like(idx)) | idx
        if masks is not None:
            summary.units[lk.site] = torch.nonzero(idx).flatten().tolist()
    for target, idx in done.items():
        bias = _param(submodule(model, target), "bias")
        bias[idx.to(bias.device)] = value
        n = int(idx.sum())
        summary.changed.append(f"{target}.bias: {n} of {bias.numel()} values set to {value}")
    return summary


# --------------------------------------------------------------------------------------
# recycle (ReDo)
# --------------------------------------------------------------------------------------


def _outputs(out: Any) -> list[Tensor]:
    """The floating tensors of a model's output (a tensor, a tuple, a dict / ModelOutput)."""
    if isinstance(out, Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, Mapping):
        out = list(out.values())
    items = out if isinstance(out, (list, tuple)) else []
    return [t for item in items for t in _outputs(item)]


def _eval_outputs(model: nn.Module, batch: Any) -> list[Tensor]:
    """The model's outputs on ``batch`` in eval mode (modes restored), detached copies."""
    with _in_eval(model):
        return [t.detach().clone() for t in _outputs(run_batch(model, batch))]


def _check_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    params = {id(p) for p in model.parameters()}
    held = [p for g in optimizer.param_groups for p in g["params"]]
    if not any(id(p) in params for p in held):
        raise ValueError(
            f"recycle: the optimizer ({type(optimizer).__name__}, {len(held)} parameter(s)) "
            "holds none of the model's parameters: pass the optimizer that trains this model"
        )


@torch.no_grad()
def recycle(
    model: nn.Module,
    source: Any,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    tau: float | None = None,
    data: Any = None,
    example_inputs: Any = None,
    generator: torch.Generator | None = None,
) -> RemedySummary:
    """ReDo: re-initialise dead units; the network's outputs stay exactly the same.

    Sokar, Agarwal, Castro, Evci, "The Dormant Neuron Phenomenon in Deep Reinforcement
    Learning", ICML 2023, Sec. 4 (ReDo). For each unit recycled:

    * its incoming weights (the producer's row, a Conv's output channel) are re-drawn
      from the layer's default initialisation (``kaiming_uniform_(a=sqrt(5))``, what
      ``nn.Linear``/``nn.Conv*`` use) and its bias is set to 0;
    * a BatchNorm between producer and activation gets, for that channel, weight 1,
      bias 0, running mean 0 and running variance 1;
    * its outgoing weights (the consumers' columns: input features of a Linear, input
      channels of a Conv, the channel's block of columns after a flatten) are set to 0;
    * with ``optimizer``, every per-parameter state tensor shaped like a touched parameter
      (Adam's ``exp_avg`` and ``exp_avg_sq``, SGD's ``momentum_buffer``) is zeroed at the
      touched rows and columns.

    **Which units.** By default the *dead* units of ``source`` (never active on the data
    measured): a dead unit contributed exactly 0 before (a ReLU's output is 0 wherever
    z <= 0) and contributes 0 after (its outgoing weights are 0), so on that data the
    outputs are unchanged. ``tau=`` recycles the *dormant* units instead, ReDo's own
    criterion (score <= tau, see :func:`deadrelu.classify.dormant_mask`): those were
    active, so the outputs change by their contribution (measured, with ``data``, in
    ``summary.max_output_change``). A dict ``{site: mask or unit indices}`` recycles
    exactly those units (outputs change unless they are dead).

    Args:
        model: the model, changed in place. Sharded by FSDP2 (``fully_shard``): call
            ``recycle`` on every rank with the same source (an all-reduced Monitor or
            scan); each sharded parameter is edited through a full copy and rank 0's new
            weights are written to every shard.
        source: a ``Report`` or ``Monitor`` or a dict ``{site: (U,) bool mask or indices}``.
        optimizer: its state is reset for the touched entries; it must hold the model's
            parameters.
        tau: recycle dormant units with this ReDo threshold instead of dead ones.
        data: batches (as :func:`deadrelu.scan.scan` takes): the first links the layers
            by a probe forward and measures ``summary.max_output_change`` (eval mode).
            All of it is scanned in eval mode before (dead units of a Report or Monitor
            that are active there, e.g. dead only under a Monitor's training-mode
            BatchNorm statistics, are not recycled and are listed in ``skipped``) and
            after (recycled units still dead are listed in ``summary.still_dead``).
            Without ``data`` the outputs are unchanged on the data the source measured,
            in the mode it measured in.
        example_inputs: one batch for the probe forward and the output check, when
            ``data`` is not given (a model ``torch.fx`` cannot trace needs one of them).
        generator: random generator for the new weights (default: torch's global one).

    Raises:
        ValueError: ``tau`` is not a finite number >= 0; the optimizer holds none of the
            model's parameters; the source's sites or unit counts are not this model's.

    Sites whose output reaches the model's output (the output layer), a residual
    addition, or anything but Linear/Conv layers are skipped, with the reason, in
    ``summary.skipped``.
    """
    if tau is not None and not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ValueError(f"recycle: tau must be a finite number >= 0, got {tau!r}")
    _refuse_fsdp1(model)
    if optimizer is not None:
        _check_optimizer(model, optimizer)
    masks = _unit_masks(source, "recycle", tau)
    batch = example_inputs
    if batch is None and data is not None:
        batch = first_batch(data)
    links = links_of(model, batch, remedy="recycle")
    _check_sites("recycle", masks, links)
    before = _eval_outputs(model, batch) if batch is not None else None
    summary = RemedySummary("recycle", model=model)
    if data is not None and tau is None and not isinstance(source, Mapping):
        masks = _dead_in_eval(model, data, masks, summary)
    touched: list[tuple[Tensor, str, Tensor]] = []  # (param, "rows"|"cols", indices)
    for site, mask in masks.items():
        if not _any(mask):
            continue
        lk = links.get(site)
        if lk is None:
            summary.skipped.append(f"{site}: not an activation site found in the model")
            continue
        problem = lk.producer_problem or lk.consumer_problem
        if problem is not None or lk.producer is None:
            summary.skipped.append(f"{site}: not recycled: {problem}")
            continue
        _recycle_site(model, lk, mask, generator, summary, touched)
    if optimizer is not None:
        n_reset = _reset_optimizer(optimizer, touched)
        if touched:
            summary.changed.append(f"optimizer: {n_reset} state tensor(s) reset at touched entries")
    if before is not None:
        after = _eval_outputs(model, batch)
        summary.max_output_change = max(
            (
                float((a.double() - b.double()).abs().max())
                for a, b in zip(after, before, strict=True)
                if a.numel()
            ),
            default=0.0,
        )
    if data is not None and summary.units:
        fresh = scan(model, data)
        for site, idx in summary.units.items():
            if site in fresh.stats:
                dead = set(fresh.dead_units(site))
                still = [u for u in idx if u in dead]
                if still:
                    summary.still_dead[site] = still
    return summary


def _refuse_fsdp1(model: nn.Module) -> None:
    """Raise when ``model`` holds FSDP1 ``FullyShardedDataParallel`` units."""
    wrapped = fsdp1_modules(model)
    if wrapped:
        raise ValueError(
            "recycle does not edit a model wrapped by FSDP1 (FullyShardedDataParallel at "
            f"{wrapped[:3]}{' ...' if len(wrapped) > 3 else ''}): outside its forward each "
            "rank holds only a flat shard of the parameters (FlatParameter; with "
            "use_orig_params=True, 1-D slices of it), so the rows and columns of a unit "
            "cannot be found, and the optimizer state is sharded the same way. Shard with "
            "FSDP2 instead (torch.distributed.fsdp.fully_shard, which recycle edits), or "
            "recycle the unsharded model (e.g. between saving a full state dict and "
            "loading it back)."
        )


def _dead_in_eval(
    model: nn.Module, data: Any, masks: dict[str, Tensor], summary: RemedySummary
) -> dict[str, Tensor]:
    """Keep the units that a scan of ``data`` in eval mode also finds dead; list the rest
    (dead in a Monitor's training-mode statistics, active with BatchNorm's running ones)."""
    now = scan(model, data)
    out: dict[str, Tensor] = {}
    for site, mask in masks.items():
        if site not in now.stats or mask.dtype != torch.bool:
            out[site] = mask
            continue
        dead = now.masks(site)["dead"]
        if dead.numel() != mask.numel():
            out[site] = mask  # the size check names the mismatch later
            continue
        active = torch.nonzero(mask & ~dead).flatten().tolist()
        if active:
            summary.skipped.append(
                f"{site}: unit(s) {active} dead in the source but active in an eval-mode scan "
                "of data= (BatchNorm running statistics): not recycled"
            )
        out[site] = mask & dead
    return out


def _recycle_site(
    model: nn.Module,
    lk: SiteLinks,
    mask: Tensor,
    generator: torch.Generator | None,
    summary: RemedySummary,
    touched: list[tuple[Tensor, str, Tensor]],
) -> None:
    assert lk.producer is not None
    site = lk.site
    producer = submodule(model, lk.producer)
    pw = _param(producer, "weight")
    pb = getattr(producer, "bias", None)
    units = pw.shape[0]
    mask = _check_units("recycle", site, mask, units, lk.producer).to(pw.device)
    idx = torch.nonzero(mask).flatten()
    with _editable(pw) as w:
        fresh = torch.empty_like(w)
        nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
        w[idx] = fresh[idx]
    touched.append((pw, "rows", idx))
    if isinstance(pb, Tensor):
        with _editable(pb) as b:
            b[idx] = 0.0
        touched.append((pb, "rows", idx))
    changed = [f"rows of {lk.producer!r} re-initialised, bias 0"]
    if lk.norm is not None:
        bn = submodule(model, lk.norm)
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
        if isinstance(bn.weight, Tensor):
            with _editable(bn.weight) as g:
                g[idx] = 1.0
            touched.append((bn.weight, "rows", idx))
        if isinstance(bn.bias, Tensor):
            with _editable(bn.bias) as b:
                b[idx] = 0.0
            touched.append((bn.bias, "rows", idx))
        if bn.running_mean is not None and bn.running_var is not None:
            bn.running_mean[idx] = 0.0
            bn.running_var[idx] = 1.0
        changed.append(f"channels of {lk.norm!r} reset")
    for path, kind in lk.consumers:
        w = _param(submodule(model, path), "weight")
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
        with _editable(w) as full:
            full[:, cols] = 0.0
        touched.append((w, "cols", cols))
        changed.append(f"columns of {path!r} zeroed ({kind})")
    summary.units[site] = [int(i) for i in idx.cpu()]
    summary.changed.append(f"{site}: {idx.numel()} unit(s) recycled: " + "; ".join(changed))


@contextlib.contextmanager
def _editable(t: Tensor) -> Iterator[Tensor]:
    """``t`` itself to edit in place; for a ``DTensor`` (a parameter or optimizer state
    sharded by FSDP2's ``fully_shard``) a full, plain copy whose edits are written back to
    this rank's shard on exit. Rank 0's copy is the one written (``distribute_tensor``
    scatters from it), so every rank gets the same new weights whatever its random
    generator. Collective for a DTensor: every rank must edit the same tensors in the same
    order (they do when the dead units come from an all-reduced Monitor or scan)."""
    if not isinstance(t, DTensor):
        yield t
        return
    full = t.full_tensor()
    yield full
    t.to_local().copy_(distribute_tensor(full, t.device_mesh, t.placements).to_local())


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
                with _editable(value) as v:
                    if kind == "rows":
                        v[idx] = 0
                    else:
                        v[:, idx] = 0
                count += 1
    return count
