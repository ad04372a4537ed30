"""Attaching to a model: every activation call, its pre-activation and output, by call site.

:func:`attach` hooks a model so that ``callback(site, z, out)`` runs on every call of an
activation deadrelu knows (see :mod:`deadrelu.activations`), with the pre-activation ``z``
and the output ``out`` (same shape). Two kinds of calls are caught:

* **module** calls: an ``nn.Module`` the registry recognises (``nn.ReLU``,
  ``nn.LeakyReLU``, ``deadrelu.activations.ELU`` ...). ``z`` is read in a forward
  pre-hook when the module is ``inplace=True`` (copied before it is overwritten, into
  scratch memory reused between calls: :func:`deadrelu.stats.scratch`), otherwise from
  the forward hook's input. With ``attach(..., inplace=(before, after))`` an in-place
  module's ``z`` is handed to ``before`` in the pre-hook instead, and its output to
  ``after``: no copy.
* **functional** calls (``functional=True``): every callable in the registry's
  ``torch_functions`` and ``tensor_methods`` (``F.relu``, ``torch.relu_``,
  ``Tensor.relu``, ``F.leaky_relu``, ``F.gelu``, ``F.silu`` ...) made inside a module's
  forward, intercepted by a :class:`torch.overrides.TorchFunctionMode` that is active only
  while the model runs, and popped while a plain torch module that calls no activation
  runs (Linear, Conv, norms, attention, pooling, dropout: see :func:`_quiet_types`; not
  their subclasses) or an activation module. The functional call made *by* one of the
  recognised activation modules is not counted again. In-place functional calls
  (``F.relu_``, ``x.relu_()``, ``inplace=True``) have ``z`` copied first.

**Call-site names.** A module site is the module's qualified name in the model
(``"features.3"``). A functional site is the qualified name of the innermost module whose
forward made the call, a colon and the registry name (``"block.mlp:gelu"``; the root
model's own forward gives ``":relu"``). That module is found on the Python call stack (the
nearest frame whose ``self`` is a module of the model), which stays right when
``torch.compile`` splits a forward at graph breaks. When the same name occurs again within one
outermost forward (a reused ``nn.ReLU`` instance, two ``F.relu`` calls in one forward), the
k-th repeat gets ``#k``: ``"features.3#1"``, ``"block.mlp:relu#1"``. Counters restart at
every outermost forward, so the names are stable from batch to batch.

**Unit axis rule.** The unit dim of a site is decided at its first call from the rank of
``z`` and the most recent *producer* seen before the call (a leaf module that finished, or,
with ``functional=True``, a functional producer such as ``F.conv2d`` or ``F.linear``):

* rank 0 or 1: the tensor is one position; every element is a unit;
* rank 2, ``(N, D)``: dim 1 (= the last dim);
* rank >= 3 after a channel-first producer (Conv1d/2d/3d and their transposes, BatchNorm,
  GroupNorm, InstanceNorm, LocalResponseNorm, pooling, upsampling: ``(N, C, *)``): dim 1;
* rank >= 3 after a last-dim producer (Linear, Bilinear, LayerNorm, RMSNorm, Embedding,
  attention, RNNs, matmul: ``(N, *, D)``): dim -1 (the last);
* rank >= 3 with no known producer: dim 1 for rank >= 4 (images, volumes), dim -1 for
  rank 3 (sequences).

The producer's own number of features refines this (:func:`deadrelu.graph.axis_hint`):
its unit axis is followed through ``transpose`` / ``permute`` / ``movedim`` calls (seen by
the torch-function mode), and where ``z`` is not that tensor itself (an elementwise op
came between) the one axis of ``z`` with the producer's size is taken when the rule's axis
has another size. So a LayerNorm over the channels of a conv map, applied channels-last
and transposed back (wav2vec2, timm's ``LayerNorm2d``), still gives channels. Where
several axes have that size and the rule's axis does not, the rule's axis is kept and a
:class:`UnitAxisWarning` names the site and the ``unit_dim`` that settles it.

Shape-preserving modules (dropout, identity, other activations) do not change the
producer. ``attach(..., unit_dim=...)`` overrides the rule: an ``int`` for every site, or
a mapping from site name or :mod:`fnmatch` pattern (``"features.*"``) to dim; the first
matching key wins, exact names before patterns. A key that can name no call site of the
model, or a dim out of range for the site's rank (checked at its first call), is a
``ValueError`` naming the site.

**Nothing skipped silently.** Modules that are probably activations deadrelu does not know
are recorded in :attr:`CaptureHandle.unrecognised` (``{module path: class name}``): leaf
modules (no children) that were called, made no recognised activation call themselves, and
either have a class name that looks like an activation (``*ReLU*``, ``*ELU*``, ``*SiLU*``,
``*Swish*``, ``*Mish*``, ``*Softplus*``, ``Hard*``, ``*Act*``: :data:`ACTIVATION_NAME`) or are
parameter-free modules of an unknown class that take the output of a layer module (Linear,
Conv, norm, ... by identity of the tensor) and return a new tensor of the same shape (an
elementwise function between layers: ``nn.Tanh``, a custom activation). With
``functional=True``, calls of elementwise nonlinearities outside the registry
(``torch.tanh``, ``torch.sigmoid``, ``torch.sin``, ``F.softsign`` ...) on a layer's output
are listed too, as ``"path:tanh"`` -> ``"tanh()"``; other unknown functions are not looked
for (they cannot be told from arithmetic). :func:`warn_unrecognised`
emits the one warning that :func:`deadrelu.scan.scan` gives, with the one-line fix
(:func:`deadrelu.activations.register_module`).

**Hooks.** Every submodule gets one forward pre-hook and one forward hook
(``always_call=True``, so the module stack unwinds also when forward raises). No hook keeps
a reference to ``z`` or ``out`` after the callback returns. :meth:`CaptureHandle.remove`
(or leaving the ``with`` block) removes every hook and pops the mode if a forward was
interrupted. Callbacks run with torch-function handling disabled, so tensor work inside
them is not intercepted. With ``torch.compile``, attach before the compiled model's first
call (dynamo then traces or graph-breaks around the hooks; hooks added later are not
called by already compiled code); checked with ``backend="eager"`` in the tests.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from deadrelu import activations
from deadrelu.activations import Activation, ActivationSpec
from deadrelu.graph import (
    LAYOUT_FUNCTIONS,
    AxisHint,
    ProducerProbe,
    axis_hint,
    default_unit_dim,
    follow,
    function_axes,
    plain_name,
    producer_axis,
    producer_features,
    submodule,
    tensor_key,
    unit_dim_from_hint,
)
from deadrelu.stats import scratch

__all__ = [
    "ACTIVATION_NAME",
    "CaptureCallback",
    "CaptureHandle",
    "InplaceCallbacks",
    "Site",
    "UnitAxisWarning",
    "UnitDim",
    "UnrecognisedActivationWarning",
    "attach",
    "default_unit_dim",
    "find_producers",
    "known_names",
    "producer_axis",
    "producer_of",
    "unrecognised_message",
    "warn_unrecognised",
]

SiteKind = Literal["module", "functional"]

#: Class names that look like an activation (searched, case-sensitive).
ACTIVATION_NAME = re.compile(
    r"ReLU|ELU|SiLU|[Ss]wish|Mish|Softplus|Hard(?:[Ss]wish|[Ss]igmoid|[Tt]anh|[Mm]ish)|Act"
)


class UnrecognisedActivationWarning(UserWarning):
    """Modules that look like activations were called but not measured."""


class UnitAxisWarning(UserWarning):
    """The unit axis of a call site could not be decided from the layer before it."""


def unrecognised_message(found: Mapping[str, str]) -> str:
    """The warning text for ``{module path or call: class or function}`` (see
    :func:`warn_unrecognised`); a function call is ``"path:name"`` -> ``"name()"``."""
    listed = ", ".join(f"{path!r} ({cls})" for path, cls in found.items())
    classes = [c for c in found.values() if not c.endswith("()")]
    fix = (
        f"If one computes a known activation, declare its class once before scanning: "
        f"deadrelu.register_module({classes[0]}, like='gelu_tanh') (like= any of: "
        f"{', '.join(activations.names())}, e.g. 'leaky_relu(0.2)')"
        if classes
        else f"Only these are measured: {', '.join(activations.names())}"
    )
    return (
        f"deadrelu did not measure {len(found)} activation-like module(s) or call(s) it does "
        f"not recognise: {listed}. {fix}"
    )


#: Elementwise functions outside the registry that are activations when applied to a
#: layer's output (listed as unrecognised, not measured).
_OTHER_NONLINEAR: frozenset[Any] = frozenset(
    f
    for owner, fn_names in (
        (torch, ("tanh", "tanh_", "sigmoid", "sigmoid_", "sin", "erf")),
        (Tensor, ("tanh", "tanh_", "sigmoid", "sigmoid_", "sin", "erf")),
        (F, ("tanh", "sigmoid", "softsign", "logsigmoid", "tanhshrink", "softshrink")),
        (F, ("hardshrink", "glu")),
    )
    for f in (getattr(owner, n, None) for n in fn_names)
    if f is not None
)


def warn_unrecognised(found: Mapping[str, str], stacklevel: int = 3) -> None:
    """One :class:`UnrecognisedActivationWarning` naming every module in ``found``
    (``{module path: class name}``, e.g. :attr:`CaptureHandle.unrecognised`); none if empty."""
    if found:
        warnings.warn(
            unrecognised_message(found), UnrecognisedActivationWarning, stacklevel=stacklevel
        )


_MAX_FRAMES = 64
UnitDim = int | Mapping[str, int] | None


@dataclass(frozen=True)
class Site:
    """One activation call site.

    Attributes:
        name: ``"features.3"``, ``"features.3#1"``, ``"block.mlp:gelu"``, ... (see module
            docstring).
        activation: the bound activation (registry spec + parameters).
        unit_dim: the unit axis of ``z`` at this site (negative: from the end).
        kind: ``"module"`` or ``"functional"``.
        module: qualified name of the module that is the activation (module sites) or
            whose forward made the call (functional sites); ``""`` is the root.
    """

    name: str
    activation: Activation
    unit_dim: int
    kind: SiteKind
    module: str = ""

    def __repr__(self) -> str:
        return (
            f"Site({self.name!r}, {self.activation}, unit_dim={self.unit_dim}, kind={self.kind!r})"
        )


#: ``callback(site, z, out)``: ``z`` pre-activation, ``out`` output, same shape.
CaptureCallback = Callable[[Site, Tensor, Tensor], None]

#: ``(before, after)`` for in-place activation modules (see :func:`attach`): ``before(site,
#: z)`` runs before the module overwrites ``z``, ``after(site, out)`` once it has returned.
InplaceCallbacks = tuple[Callable[[Site, Tensor], None], Callable[[Site, Tensor], None]]


def known_names() -> list[str]:
    """Registry names of the activations capture recognises."""
    return activations.names()


# ------------------------------------------------------------------------------------------
# Producers: what decides the unit axis
# ------------------------------------------------------------------------------------------


def _quiet_types() -> frozenset[type[nn.Module]]:
    """torch module classes whose own forward calls no activation of the registry.

    While one of these (exactly this class, not a subclass, whose forward may differ) runs,
    the torch-function mode is suspended: its calls would only be re-dispatched to find
    nothing, at a cost of a few microseconds each (dozens of calls for attention). Their
    producer axis comes from the module itself (:func:`deadrelu.graph.producer_axis`).
    """
    names = [
        "Linear",
        "Bilinear",
        "Conv1d",
        "Conv2d",
        "Conv3d",
        "ConvTranspose1d",
        "ConvTranspose2d",
        "ConvTranspose3d",
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "LayerNorm",
        "GroupNorm",
        "RMSNorm",
        "LocalResponseNorm",
        "Embedding",
        "EmbeddingBag",
        "MultiheadAttention",
        "Dropout",
        "Dropout1d",
        "Dropout2d",
        "Dropout3d",
        "AlphaDropout",
        "Identity",
        "Flatten",
        "Unflatten",
        "MaxPool1d",
        "MaxPool2d",
        "MaxPool3d",
        "AvgPool1d",
        "AvgPool2d",
        "AvgPool3d",
        "AdaptiveAvgPool1d",
        "AdaptiveAvgPool2d",
        "AdaptiveAvgPool3d",
        "AdaptiveMaxPool1d",
        "AdaptiveMaxPool2d",
        "AdaptiveMaxPool3d",
        "Upsample",
        "PixelShuffle",
        "PixelUnshuffle",
        "Softmax",
        "LogSoftmax",
    ]
    return frozenset(getattr(nn, n) for n in names if hasattr(nn, n))


_QUIET_TYPES = _quiet_types()


def _function_specs() -> dict[Any, ActivationSpec]:
    table: dict[Any, ActivationSpec] = {}
    for name in activations.names():
        spec = activations.get(name)
        assert spec is not None
        for fn in spec.spec.torch_functions:
            table[fn] = spec.spec
        for meth in spec.spec.tensor_methods:
            table[getattr(Tensor, meth)] = spec.spec
    return table


_FUNCTION_SPECS: dict[Any, ActivationSpec] | None = None


def _tables() -> tuple[dict[Any, ActivationSpec], dict[Any, int]]:
    global _FUNCTION_SPECS
    if _FUNCTION_SPECS is None:
        _FUNCTION_SPECS = _function_specs()
    return _FUNCTION_SPECS, function_axes()


# ------------------------------------------------------------------------------------------
# Functional parameters and in-place detection
# ------------------------------------------------------------------------------------------

#: torch keyword names that differ from registry parameter names.
_TORCH_KW = {"negative_slope": "slope"}
_SIGNATURES: dict[Any, inspect.Signature | None] = {}


def _signature(func: Any) -> inspect.Signature | None:
    if func not in _SIGNATURES:
        try:
            _SIGNATURES[func] = inspect.signature(func)
        except (TypeError, ValueError):
            _SIGNATURES[func] = None
    return _SIGNATURES[func]


def _bound_arguments(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    sig = _signature(func)
    if sig is None:
        return dict(kwargs)
    try:
        return dict(sig.bind_partial(*args, **kwargs).arguments)
    except TypeError:
        return dict(kwargs)


def _is_inplace(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if getattr(func, "__name__", "").endswith("_"):
        return True
    if "inplace" in kwargs:
        return bool(kwargs["inplace"])
    if len(args) <= 1:
        return False
    return bool(_bound_arguments(func, args, kwargs).get("inplace", False))


def _functional_activation(
    spec: ActivationSpec, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Activation:
    """Bind the registry parameters of a functional call (defaults where unreadable)."""
    bound = _bound_arguments(func, args, kwargs)
    wanted = {p.name for p in spec.params}
    params: dict[str, Any] = {}
    for key, value in bound.items():
        name = _TORCH_KW.get(key, key)
        if name in wanted and not isinstance(value, Tensor):
            params[name] = value
    if not bound and len(args) > 1 and spec.params:
        # builtins without a signature: positional parameters follow the input
        for p, v in zip(spec.params, args[1:], strict=False):
            if not isinstance(v, Tensor):
                params[p.name] = v
    try:
        return spec.bind(**params)
    except ValueError:
        return spec.bind()


def _copy(z: Tensor) -> Tensor:
    """A detached copy of ``z`` (taken before an in-place activation) in reused scratch memory.

    Only one copy is alive at a time: activation modules are leaves, and functional calls
    inside them are not captured.
    """
    buf = scratch(z.shape, z.dtype, z.device, slot="capture")
    return buf.copy_(z.detach())


@torch.compiler.disable
def _frame_owner(modules: Mapping[int, tuple[str, bool]]) -> tuple[str, bool] | None:
    """The entry of the nearest frame on the call stack whose ``self`` is in ``modules``.

    Never traced by dynamo (``torch.compiler.disable``): under ``torch.compile`` the call
    breaks the graph silently and runs in real frames, as the lookup needs.
    """
    frame: FrameType | None = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            entry = modules.get(id(frame.f_locals.get("self")))
            if entry is not None:
                return entry
        frame = frame.f_back
    return None


# ------------------------------------------------------------------------------------------
# The handle
# ------------------------------------------------------------------------------------------


@dataclass
class _State:
    """Mutable capture state shared by the hooks of one :func:`attach`."""

    callback: CaptureCallback
    unit_dim: UnitDim
    functional: bool
    sites: dict[str, Site] = field(default_factory=dict)
    stack: list[tuple[str, bool]] = field(default_factory=list)  # (path, is_activation)
    counts: dict[str, int] = field(default_factory=dict)
    producer: int | None = None
    mode: _CaptureMode | None = None
    mode_on: bool = False
    suspended_at: int = 0  # depth of the module that popped the mode (0: none)
    inplace: InplaceCallbacks | None = None
    pending: dict[int, list[tuple[Site, torch.Size]]] = field(default_factory=dict)
    stash: dict[int, list[Tensor]] = field(default_factory=dict)
    modules: dict[int, tuple[str, bool]] = field(default_factory=dict)  # id -> stack entry
    last_layer_out: tuple[int, tuple[int, ...], tuple[int, ...]] | None = None
    hint: AxisHint | None = None  # units of the latest layer output, through transposes
    unknown: dict[str, str] = field(default_factory=dict)  # path -> class name, called

    def enclosing(self) -> tuple[str, bool]:
        """(path, is_activation) of the innermost hooked module whose code is running.

        Read from the Python call stack (the nearest frame whose ``self`` is a hooked
        module), which stays right when ``torch.compile`` splits a forward at graph
        breaks and the hooks' own bookkeeping runs out of order; the hook-maintained
        stack is the fallback.
        """
        entry = _frame_owner(self.modules)
        if entry is not None:
            return entry
        return self.stack[-1] if self.stack else ("", False)

    def site_name(self, base: str) -> str:
        k = self.counts.get(base, 0)
        self.counts[base] = k + 1
        return base if k == 0 else f"{base}#{k}"

    def resolve_unit_dim(self, name: str, z: Tensor) -> int:
        """The unit dim of site ``name`` at its first call, with pre-activation ``z``."""
        override = self.unit_dim
        dim: int | None = None
        if isinstance(override, int):
            dim = override
        elif override:
            if name in override:
                dim = int(override[name])
            else:
                for pattern, d in override.items():
                    if fnmatch.fnmatchcase(name, pattern):
                        dim = int(d)
                        break
        ndim = z.dim()
        if dim is not None:
            if ndim >= 2 and not -ndim <= dim < ndim:
                raise ValueError(
                    f"unit_dim={dim} is out of range for site {name!r}: its pre-activation "
                    f"has shape {tuple(z.shape)} (rank {ndim}), so the unit dim must be in "
                    f"{-ndim}..{ndim - 1}; pass e.g. unit_dim={{{name!r}: 1}}"
                )
            return dim
        default = default_unit_dim(ndim, self.producer)
        found, ambiguous = unit_dim_from_hint(z, self.hint, default)
        if ambiguous and self.hint is not None:
            warnings.warn(
                f"deadrelu: the unit axis of site {name!r} is ambiguous: its pre-activation "
                f"has shape {tuple(z.shape)}, with several axes of size {self.hint.size}, the "
                f"number of features of the layer before it ({self.hint.source}); counting "
                f"units along dim {found}. If that is wrong, pass unit_dim={{{name!r}: d}} "
                f"to scan / Monitor / attach",
                UnitAxisWarning,
                stacklevel=2,
            )
        return found

    def site(self, name: str, activation: Activation, z: Tensor, kind: SiteKind, path: str) -> Site:
        site = self.sites.get(name)
        if site is None:
            site = Site(name, activation, self.resolve_unit_dim(name, z), kind, path)
            self.sites[name] = site
        return site

    def emit(self, site: Site, z: Tensor, out: Tensor) -> None:
        with torch._C.DisableTorchFunction():
            self.callback(site, z, out)


class _CaptureMode(TorchFunctionMode):
    """Intercepts functional activation calls and functional producers."""

    def __init__(self, state: _State) -> None:
        super().__init__()
        self.state = state
        self.specs, self.producers = _tables()
        # every callable the slow path below does something for; any other call (most of
        # a forward: views, arithmetic, tensor attributes) is passed straight through
        # (a dict, not a frozenset: dynamo, tracing this method, guards a dict attribute)
        self.watched: dict[Any, None] = dict.fromkeys(
            [*self.specs, *self.producers, *LAYOUT_FUNCTIONS, *_OTHER_NONLINEAR]
        )

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        try:
            passed = func not in self.watched
        except TypeError:  # unhashable callable: the slow path decides
            passed = False
        if passed:
            return func(*args, **(kwargs or {}))
        kwargs = kwargs or {}
        try:
            spec = self.specs.get(func)
            producer = self.producers.get(func) if spec is None else None
            layout = self.state.hint is not None and func in LAYOUT_FUNCTIONS
            other = func in _OTHER_NONLINEAR
        except TypeError:  # unhashable callable
            spec = producer = None
            layout = other = False
        if spec is None:
            if producer is not None:
                self.state.producer = producer
                out = func(*args, **kwargs)
                if isinstance(out, Tensor):
                    name = getattr(func, "__name__", "a layer function")
                    self.state.hint = axis_hint(out, producer, None, f"{name}()")
                return out
            if layout:
                out = func(*args, **kwargs)
                self.state.hint = follow(self.state.hint, func, args, kwargs, out)
                return out
            if other and args and isinstance(args[0], Tensor):
                self._note_other(func, args[0])
            return func(*args, **kwargs)
        state = self.state
        path, in_activation = state.enclosing()
        z = args[0] if args else kwargs.get("input")
        if in_activation or not isinstance(z, Tensor):
            return func(*args, **kwargs)
        z_in = _copy(z) if _is_inplace(func, args, kwargs) else z
        out = func(*args, **kwargs)
        name = state.site_name(f"{path}:{spec.name}")
        site = state.sites.get(name)
        if site is None:
            act = _functional_activation(spec, func, args, kwargs)
            site = state.site(name, act, z_in, "functional", path)
        if isinstance(out, Tensor) and out.shape == z_in.shape:
            state.emit(site, z_in.detach(), out.detach())
        return out

    def _note_other(self, func: Any, z: Tensor) -> None:
        """An elementwise nonlinearity outside the registry (``torch.tanh`` ...) applied to
        the output of a layer (module or function, by identity): listed as unrecognised."""
        state = self.state
        key = tensor_key(z)
        if key == state.last_layer_out or (state.hint is not None and key == state.hint.key):
            path, in_activation = state.enclosing()
            if not in_activation:
                name = getattr(func, "__name__", "function").rstrip("_")
                state.unknown.setdefault(f"{path}:{name}", f"{name}()")


class CaptureHandle:
    """What :func:`attach` returns: the sites seen so far, and :meth:`remove`.

    Use as a context manager (``with attach(model, cb) as handle: ...``) to remove the
    hooks on exit, whatever happens.
    """

    def __init__(self, state: _State, handles: list[RemovableHandle]) -> None:
        self._state = state
        self._handles = handles

    @property
    def sites(self) -> dict[str, Site]:
        """Sites by name, in order of first call (filled as calls happen)."""
        return self._state.sites

    @property
    def unrecognised(self) -> dict[str, str]:
        """``{module path: class name}`` of the modules called so far that look like
        activations deadrelu does not know (module docstring), in order of first call."""
        measured = {site.module for site in self._state.sites.values()}
        found = {p: c for p, c in self._state.unknown.items() if p not in measured}
        # a call inside a listed module (nn.Tanh's torch.tanh) is that module's
        return {p: c for p, c in found.items() if ":" not in p or p.rpartition(":")[0] not in found}

    @property
    def active(self) -> bool:
        """True until :meth:`remove`."""
        return bool(self._handles)

    def remove(self) -> None:
        """Remove every hook; pop the torch-function mode if a forward was interrupted."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        state = self._state
        if state.mode_on and state.mode is not None and not state.suspended_at:
            state.mode.__exit__(None, None, None)
        state.mode_on = False
        state.suspended_at = 0
        state.stack.clear()
        state.stash.clear()
        state.pending.clear()

    def __enter__(self) -> CaptureHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


# ------------------------------------------------------------------------------------------
# attach
# ------------------------------------------------------------------------------------------


def attach(
    model: nn.Module,
    callback: CaptureCallback,
    *,
    unit_dim: UnitDim = None,
    functional: bool = True,
    inplace: InplaceCallbacks | None = None,
) -> CaptureHandle:
    """Hook ``model`` so that ``callback(site, z, out)`` runs on every activation call.

    Args:
        model: any ``nn.Module``; every submodule is hooked.
        callback: called with the :class:`Site`, the pre-activation ``z`` and the output
            ``out`` (both detached, same shape, e.g. ``(N, C, H, W)``). It must not keep
            references to them. It runs inside the forward: keep it cheap and free of host
            synchronisation if the model runs on an accelerator.
        unit_dim: override of the unit axis rule (module docstring): an ``int`` for every
            site or ``{site name or fnmatch pattern: dim}``.
        functional: also intercept functional calls (``F.relu``, ``x.relu()``...) made in
            forwards. ``False`` hooks activation modules only, a little cheaper.
        inplace: ``(before, after)``: for in-place activation modules (``nn.ReLU(inplace=
            True)``), call ``before(site, z)`` in the forward pre-hook, while ``z`` is
            intact, and ``after(site, out)`` when the module returns, instead of copying
            ``z`` and calling ``callback``. For callers that reduce ``z`` and ``out``
            separately (:func:`deadrelu.scan.scan`): it saves a copy of every such ``z``.

    Returns:
        A :class:`CaptureHandle`; call ``.remove()`` or use it as a context manager.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"attach needs an nn.Module, got {type(model).__name__}")
    _check_unit_dim(model, unit_dim)
    state = _State(callback=callback, unit_dim=unit_dim, functional=functional, inplace=inplace)
    if functional:
        state.mode = _CaptureMode(state)
    handles: list[RemovableHandle] = []
    try:
        for path, module in model.named_modules():
            handles.extend(_hook_module(state, plain_name(path), module))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return CaptureHandle(state, handles)


def _check_unit_dim(model: nn.Module, unit_dim: UnitDim) -> None:
    """Raise ``ValueError`` for a ``unit_dim`` that is not an int, or a mapping with a key
    that can name no call site of ``model`` or a value that is not an int. (A dim out of
    range is caught at the site's first call, when its rank is known.)"""
    if unit_dim is None:
        return
    if isinstance(unit_dim, bool) or not isinstance(unit_dim, (int, Mapping)):
        raise ValueError(
            f"unit_dim must be an int or a mapping {{site name or pattern: int}}, got {unit_dim!r}"
        )
    if isinstance(unit_dim, int):
        return
    paths = [plain_name(p) for p, _ in model.named_modules()]
    acts = activations.names()
    known = {*paths, *acts}

    def possible(key: str) -> bool:
        base = re.sub(r"#\d+$", "", key)
        path, colon, act = base.rpartition(":")
        if colon:
            return path in known and act in acts
        return base in known

    def matches(pattern: str) -> bool:
        if any(fnmatch.fnmatchcase(c, pattern) for c in known):
            return True
        return ":" in pattern and any(
            fnmatch.fnmatchcase(f"{p}:{a}", pattern) for p in paths for a in acts
        )

    for key, dim in unit_dim.items():
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ValueError(f"unit_dim[{key!r}] must be an int, got {dim!r}")
        if not isinstance(key, str):
            raise ValueError(f"unit_dim keys must be site names or patterns, got {key!r}")
        if possible(key) or matches(key):
            continue
        raise ValueError(
            f"unit_dim names {key!r}, which is no call site of this "
            f"{type(model).__name__}: a site is the path of an activation module "
            f"('features.3'), or '<module path>:<activation>' for a functional call "
            f"('block.mlp:gelu', ':relu' in the model's own forward), with '#k' for the "
            f"k-th repeat, or an fnmatch pattern ('features.*'); module paths here include "
            f"{', '.join(repr(p) for p in paths[1:6])}"
        )


def _suspend_mode(state: _State) -> None:
    """Pop the capture mode for the module just entered (a quiet one: see
    :func:`_quiet_types`), if it is on top of the torch-function stack; not while compiling."""
    if torch.compiler.is_compiling():
        return
    depth = torch._C._len_torch_function_stack()
    if depth and torch._C._get_function_stack_at(depth - 1) is state.mode:
        torch._C._pop_torch_function_stack()
        state.suspended_at = len(state.stack)


def _resume_mode(state: _State) -> None:
    """Push the capture mode back when the module that suspended it returns."""
    torch._C._push_on_torch_function_stack(state.mode)
    state.suspended_at = 0


def _hook_module(state: _State, path: str, module: nn.Module) -> list[RemovableHandle]:
    spec = activations.spec_for_module(module)
    act = activations.get(module) if spec is not None else None
    is_leaf = next(iter(module.children()), None) is None
    quiet = act is not None or type(module) in _QUIET_TYPES
    producer = producer_axis(module) if is_leaf or quiet else None
    features = producer_features(module) if producer is not None else None
    inplace = bool(getattr(module, "inplace", False)) if act is not None else False
    base = path if path else (act.name if act is not None else "")
    key = id(module)
    entry = (path, act is not None)
    state.modules[key] = entry
    cls_name = type(module).__name__
    unknown = is_leaf and spec is None and producer is None and not quiet
    by_name = unknown and ACTIVATION_NAME.search(cls_name) is not None
    # an unknown parameter-free module: watched for taking a layer's output (see docstring)
    watch = unknown and not by_name and next(module.parameters(recurse=False), None) is None
    fed_by_layer: list[tuple[int, torch.Size]] = []  # (data_ptr, shape) of a layer's output
    source = f"module {path!r}"  # names the layer in an ambiguous-axis warning

    def pre(mod: nn.Module, args: tuple[Any, ...]) -> None:
        if not state.stack:
            state.counts.clear()
            if state.mode is not None and not state.mode_on:
                state.mode.__enter__()
                state.mode_on = True
        state.stack.append(entry)
        if quiet and state.mode_on and not state.suspended_at:
            _suspend_mode(state)
        z_in = args[0] if watch and args and isinstance(args[0], Tensor) else None
        if z_in is not None and tensor_key(z_in) == state.last_layer_out:
            fed_by_layer.append((z_in.data_ptr(), z_in.shape))
        if inplace and args and isinstance(args[0], Tensor):
            with torch._C.DisableTorchFunction():
                if state.inplace is not None and act is not None:
                    z = args[0].detach()
                    site = state.site(state.site_name(base), act, z, "module", path)
                    state.pending.setdefault(key, []).append((site, z.shape))
                    state.inplace[0](site, z)
                else:
                    state.stash.setdefault(key, []).append(_copy(args[0]))

    def post(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        try:
            if act is not None and inplace and state.pending.get(key):
                site, shape = state.pending[key].pop()
                if isinstance(out, Tensor) and out.shape == shape and state.inplace is not None:
                    with torch._C.DisableTorchFunction():
                        state.inplace[1](site, out.detach())
            elif act is not None:
                z = state.stash[key].pop() if inplace and state.stash.get(key) else None
                if z is None and args and isinstance(args[0], Tensor):
                    z = args[0]
                if isinstance(z, Tensor) and isinstance(out, Tensor) and out.shape == z.shape:
                    name = state.site_name(base)
                    site = state.site(name, act, z, "module", path)
                    state.emit(site, z.detach(), out.detach())
            elif producer is not None:
                state.producer = producer
                if isinstance(out, Tensor):
                    state.last_layer_out = tensor_key(out)
                    if state.hint is None or state.hint.key != state.last_layer_out:
                        # (else: the layer's own functional calls, followed through its
                        # permutes, already describe its output exactly)
                        state.hint = axis_hint(out, producer, features, source)
            elif by_name:
                state.unknown.setdefault(path, cls_name)
            elif fed_by_layer:
                ptr, shape = fed_by_layer.pop()
                if isinstance(out, Tensor) and out.shape == shape and out.data_ptr() != ptr:
                    state.unknown.setdefault(path, cls_name)
        finally:
            if state.suspended_at and state.suspended_at >= len(state.stack):
                _resume_mode(state)
            if state.stack:
                state.stack.pop()
            if not state.stack:
                state.producer = None
                state.last_layer_out = None
                state.hint = None
                if state.mode_on and state.mode is not None:
                    state.mode.__exit__(None, None, None)
                    state.mode_on = False

    return [
        module.register_forward_pre_hook(pre),
        module.register_forward_hook(post, always_call=True),
    ]


# ------------------------------------------------------------------------------------------
# The probe forward: which module feeds each site
# ------------------------------------------------------------------------------------------


def find_producers(
    model: nn.Module, *inputs: Any, unit_dim: UnitDim = None, functional: bool = True
) -> dict[str, str | None]:
    """Map each activation site to the module whose output feeds it, by one probe forward.

    Runs ``model(*inputs)`` once under ``torch.no_grad()`` with a
    :class:`deadrelu.graph.ProducerProbe` (hooks on every Linear, Conv, BatchNorm, LayerNorm
    and GroupNorm) and the capture attached; a site's producer is the module whose output
    *is* the activation's input tensor (identity, not shape), e.g. ``fc1`` for
    ``F.relu(self.fc1(x))`` and ``bn1`` for ``relu(bn1(conv1(x)))``. A site fed by anything
    else (a sum, a reshape, an in-place op, the copy capture makes for an in-place
    activation) maps to ``None``. Works on models ``torch.fx`` cannot trace.

    Returns:
        ``{site name: producer module name or None}``.
    """
    found: dict[str, str | None] = {}
    with ProducerProbe(model) as probe:

        def on_site(site: Site, z: Tensor, out: Tensor) -> None:
            if found.get(site.name) is None:
                found[site.name] = probe.producer(z)

        with attach(model, on_site, unit_dim=unit_dim, functional=functional), torch.no_grad():
            model(*inputs)
    return found


def producer_of(model: nn.Module, site: str, *inputs: Any) -> nn.Module | None:
    """The module whose output feeds activation site ``site`` (see :func:`find_producers`).

    Args:
        model: the model.
        site: a site name as the capture names it (``handle.sites``, ``Report`` keys).
        inputs: one example batch for the probe forward.

    Returns:
        The producer module, or ``None`` when the activation's input is not the direct
        output of a Linear/Conv/norm module.
    """
    name = find_producers(model, *inputs).get(site)
    if name is None:
        return None
    return submodule(model, name)
