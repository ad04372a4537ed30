"""The model graph: everything deadrelu knows about a model's structure, in one place.

* **Layer roles and unit axes**: which layers *produce* pre-activations and along which
  axis their units lie (:func:`producer_axis`: channel-first convs/norms/pooling -> dim 1;
  Linear, LayerNorm, attention, matmul -> the last dim), and the default rule
  (:func:`default_unit_dim`) that :mod:`deadrelu.capture` applies at each call site.
* **Tracing**: :func:`trace` (``torch.fx``, activation modules kept as leaves) and
  :func:`site_names` (every activation node, named as capture names call sites).
* **Links**: :func:`link_sites` joins each activation site to its producer (the Linear /
  Conv feeding it, through at most one BatchNorm and any Dropout / Identity) and its
  consumers (the Linear / Conv layers reading its output, through Dropout, Identity,
  pooling, BatchNorm, other activations and one flatten: ``Conv -> ReLU -> flatten ->
  Linear`` reads the channel's block of columns). A site whose output reaches anything
  else (a residual addition, a concatenation, the model's output) has no complete set of
  consumers, and :class:`SiteLinks` says why.
* **The probe fallback** for models ``torch.fx`` cannot trace: :class:`ProducerProbe`
  records, during one ordinary forward, which module produced which tensor (identity of
  memory, not shape); :func:`deadrelu.capture.find_producers` runs that forward with the
  capture attached.

This module imports only :mod:`deadrelu.activations` from the package: capture, scan,
monitor, certify, explain and remedies build on it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from deadrelu.activations import (
    Activation,
    ActivationSpec,
    get,
    names,
    spec_for_function,
    spec_for_module,
)

__all__ = [
    "CHANNEL",
    "LAST",
    "LAYOUT_FUNCTIONS",
    "PRODUCER_TYPES",
    "WRAPPER_SEGMENTS",
    "AxisHint",
    "LinkProbe",
    "ProducerProbe",
    "SiteLinks",
    "activation_module_spec",
    "activation_spec_of",
    "axis_hint",
    "default_unit_dim",
    "follow",
    "fsdp1_modules",
    "fsdp_modules",
    "function_axes",
    "get_or_none",
    "is_producer",
    "link_sites",
    "plain_class",
    "plain_modules",
    "plain_name",
    "producer_axis",
    "producer_features",
    "site_names",
    "submodule",
    "tensor_key",
    "trace",
    "unit_dim_from_hint",
]

# ------------------------------------------------------------------------------------------
# Layer roles and unit axes
# ------------------------------------------------------------------------------------------

#: Unit axis of channel-first producers ``(N, C, *)``.
CHANNEL = 1
#: Unit axis of last-dim producers ``(N, *, D)``.
LAST = -1

_CHANNEL_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
)
_LAST_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.LayerNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.MultiheadAttention,
    nn.RNNBase,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def _module_producer(module: nn.Module) -> int | None:
    if isinstance(module, _CHANNEL_MODULES):
        return CHANNEL
    if isinstance(module, _LAST_MODULES):
        return LAST
    return None


def _function_axes() -> dict[Any, int]:
    table: dict[Any, int] = {}
    channel = [
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "batch_norm",
        "group_norm",
        "instance_norm",
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "adaptive_avg_pool2d",
        "adaptive_max_pool2d",
        "interpolate",
    ]
    last = [
        "linear",
        "bilinear",
        "layer_norm",
        "rms_norm",
        "embedding",
        "scaled_dot_product_attention",
    ]
    for fn_names, kind in ((channel, CHANNEL), (last, LAST)):
        for name in fn_names:
            for ns in (F, torch):
                fn = getattr(ns, name, None)
                if fn is not None:
                    table[fn] = kind
    for fn in (torch.matmul, torch.bmm, torch.mm, torch.addmm, torch.baddbmm, torch.einsum):
        table[fn] = LAST
    for meth in ("matmul", "__matmul__", "bmm", "mm"):
        table[getattr(Tensor, meth)] = LAST
    return table


_FUNCTION_AXES = _function_axes()


def function_axes() -> dict[Any, int]:
    """torch callable (``F.conv2d``, ``torch.matmul``, ``Tensor.matmul``) -> the unit axis its
    output implies (1 or -1): the functional producers."""
    return _FUNCTION_AXES


def producer_axis(producer: nn.Module | Callable[..., Any]) -> int | None:
    """The unit axis a producer implies: 1 (channel-first: conv, norm, pooling), -1 (last dim:
    Linear, LayerNorm, attention, matmul), or None (shape-preserving or unknown).

    ``producer`` is a module instance or a torch callable (``F.conv2d``, ``torch.matmul``).
    """
    if isinstance(producer, nn.Module):
        return _module_producer(producer)
    return _FUNCTION_AXES.get(producer)


def default_unit_dim(ndim: int, producer: int | None) -> int:
    """The unit dim of a rank-``ndim`` pre-activation after a producer of axis ``producer``
    (see :func:`producer_axis`), by the rule in :mod:`deadrelu.capture`'s docstring."""
    if ndim <= 2:
        return -1
    if producer is not None:
        return producer
    return CHANNEL if ndim >= 4 else LAST


def producer_features(module: nn.Module) -> int | None:
    """The number of features (units) a producer layer outputs, read from its attributes:
    Linear/Bilinear ``out_features``, Conv ``out_channels``, BatchNorm/InstanceNorm
    ``num_features``, GroupNorm ``num_channels``, LayerNorm/RMSNorm the last entry of
    ``normalized_shape``, Embedding ``embedding_dim``, MultiheadAttention ``embed_dim``;
    None for the others (pooling, upsampling: they keep whatever came in)."""
    for attr in ("out_features", "out_channels", "num_features", "num_channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list)) and shape and isinstance(shape[-1], int):
        return int(shape[-1])
    for attr in ("embedding_dim", "embed_dim"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


@dataclass(frozen=True)
class AxisHint:
    """Where the units are in the most recent layer output, followed through transposes.

    Attributes:
        key: :func:`tensor_key` of the tensor the hint is about.
        ndim: its rank.
        axis: the unit axis in it (0 <= axis < ndim), or None when ambiguous (several axes
            have ``size`` and none is the layer's own axis).
        size: the number of units (the layer's features).
        source: the layer, for messages (``"module 'feature_extractor.conv0'"``).
    """

    key: tuple[int, tuple[int, ...], tuple[int, ...]]
    ndim: int
    axis: int | None
    size: int
    source: str


def _axes_of_size(shape: tuple[int, ...], size: int) -> list[int]:
    """The non-batch axes of ``shape`` with ``size`` elements."""
    return [d for d in range(1, len(shape)) if shape[d] == size]


def axis_hint(out: Tensor, axis: int, features: int | None, source: str) -> AxisHint | None:
    """The hint for a layer output ``out`` whose units are along ``axis`` (1 or -1, the
    layer's role) with ``features`` units when known (:func:`producer_features`).

    When ``out`` has another layout than the role says (a LayerNorm applied inside a module
    that permutes to channels-last and back, timm's ``LayerNorm2d``) the unit axis is the
    one axis of size ``features``; several such axes, none the role's: ambiguous (None).
    Rank <= 2 outputs (``(N, D)``) get no hint: their unit axis is the last, always.
    """
    if out.dim() <= 2:
        return None
    shape = tuple(out.shape)
    role = axis % out.dim()
    size = features if features is not None else shape[role]
    found: int | None = role
    if shape[role] != size:
        matches = _axes_of_size(shape, size)
        found = matches[0] if len(matches) == 1 else None
        if not matches:  # the features are not an axis here (a reshape): trust the role
            found, size = role, shape[role]
    return AxisHint(tensor_key(out), out.dim(), found, size, source)


def _permuted(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], ndim: int) -> list[int]:
    """For a layout call ``func(x, ...)`` returning ``y``: ``order`` with ``y``'s axis ``i``
    = ``x``'s axis ``order[i]``; ``[]`` if ``func`` is not a transpose/permute/movedim."""
    name = getattr(func, "__name__", "")
    rest = list(args[1:])
    order = list(range(ndim))
    if name in ("transpose", "swapaxes", "swapdims"):
        a = rest[0] if rest else kwargs.get("dim0", kwargs.get("axis0"))
        b = rest[1] if len(rest) > 1 else kwargs.get("dim1", kwargs.get("axis1"))
        if not isinstance(a, int) or not isinstance(b, int):
            return []
        a, b = a % ndim, b % ndim
        order[a], order[b] = order[b], order[a]
        return order
    if name == "permute":
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        dims = dims or list(kwargs.get("dims", ()))
        if len(dims) != ndim or not all(isinstance(d, int) for d in dims):
            return []
        return [int(d) % ndim for d in dims]
    if name in ("movedim", "moveaxis"):
        src = rest[0] if rest else kwargs.get("source")
        dst = rest[1] if len(rest) > 1 else kwargs.get("destination")
        if not isinstance(src, int) or not isinstance(dst, int):
            return []
        order.remove(src % ndim)
        order.insert(dst % ndim, src % ndim)
        return order
    if name in ("contiguous", "clone", "t"):
        return order[::-1] if name == "t" else order
    return []


#: torch callables that move axes without changing values (followed by :func:`follow`).
LAYOUT_FUNCTIONS: frozenset[Any] = frozenset(
    f
    for owner, names in (
        (Tensor, ("transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis")),
        (Tensor, ("contiguous", "clone", "t")),
        (torch, ("transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "t")),
    )
    for f in (getattr(owner, n, None) for n in names)
    if f is not None
)


def follow(
    hint: AxisHint | None, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> AxisHint | None:
    """The hint for ``out = func(x, ...)`` when ``x`` is the hint's tensor and ``func`` a
    layout call (:data:`LAYOUT_FUNCTIONS`); otherwise ``hint`` unchanged."""
    if hint is None or not args or not isinstance(args[0], Tensor) or not isinstance(out, Tensor):
        return hint
    if tensor_key(args[0]) != hint.key or out.dim() != hint.ndim:
        return hint
    order = _permuted(func, args, kwargs, hint.ndim)
    if not order:
        return hint
    axis = order.index(hint.axis) if hint.axis is not None else None
    return AxisHint(tensor_key(out), hint.ndim, axis, hint.size, hint.source)


def unit_dim_from_hint(z: Tensor, hint: AxisHint | None, default: int) -> tuple[int, bool]:
    """The unit dim of a pre-activation ``z`` (rank >= 3) given the latest layer's hint:
    ``(dim, ambiguous)``.

    * ``z`` *is* the hinted tensor (the layer's output, maybe transposed): the hinted axis;
    * ``z`` was computed from it elementwise (a bias, a residual sum): the axis of ``z`` of
      the layer's size, if ``default`` (the role rule) does not already have that size and
      exactly one axis has it;
    * otherwise ``default``. ``ambiguous`` is True when the hint could not decide between
      several axes of the layer's size and none of them is ``default``.
    """
    if hint is None or z.dim() <= 2:
        return default, False
    shape = tuple(z.shape)
    if tensor_key(z) == hint.key and hint.axis is not None:
        return _signed(hint.axis, z.dim()), False
    if shape[default] == hint.size:
        return default, False
    matches = _axes_of_size(shape, hint.size)
    if len(matches) == 1:
        return _signed(matches[0], z.dim()), False
    return default, len(matches) > 1


def _signed(axis: int, ndim: int) -> int:
    """The last axis as -1 (``(N, *, D)``), others counted from the front."""
    return -1 if axis == ndim - 1 else axis


# ------------------------------------------------------------------------------------------
# Tracing
# ------------------------------------------------------------------------------------------


def _fsdp_module_class() -> type | None:
    """FSDP2's ``FSDPModule`` (the base of the classes ``fully_shard`` swaps in), or None
    when this torch has no ``torch.distributed.fsdp``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return None
    return FSDPModule


_FSDP_MODULE = _fsdp_module_class()


def plain_class(module: nn.Module) -> type[nn.Module]:
    """The class of ``module`` before a sharding wrapper changed it in place.

    FSDP2's ``fully_shard(module)`` keeps the module (its name, its place in the model)
    but swaps its class for a new ``FSDP<Class>`` whose bases are ``(FSDPModule, Class)``
    (so ``isinstance`` still holds but ``type(m)`` and ``type(m).__module__`` change).
    This returns ``Class``; for any other module ``type(module)``.
    """
    cls = type(module)
    if _FSDP_MODULE is not None and issubclass(cls, _FSDP_MODULE):
        for k in cls.__mro__:
            if issubclass(k, nn.Module) and not issubclass(k, _FSDP_MODULE):
                return k
    return cls


def fsdp_modules(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` (``""``: the model itself) that FSDP2's
    ``fully_shard`` was applied to (their class is an ``FSDPModule``), in module order."""
    if _FSDP_MODULE is None:
        return []
    return [name for name, m in model.named_modules() if isinstance(m, _FSDP_MODULE)]


#: Path segments that wrappers insert between a module and its parent, dropped from every
#: name deadrelu shows: FSDP1's ``FullyShardedDataParallel`` (``_fsdp_wrapped_module``),
#: activation checkpointing's ``checkpoint_wrapper`` (``_checkpoint_wrapped_module``) and
#: a ``torch.compile``'d submodule (``_orig_mod``).
WRAPPER_SEGMENTS: frozenset[str] = frozenset(
    {"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"}
)


def plain_name(path: str) -> str:
    """The module path ``path`` as the unwrapped model names it: the wrapper segments
    (:data:`WRAPPER_SEGMENTS`) dropped, e.g. ``"_fsdp_wrapped_module.block.
    _checkpoint_wrapped_module.fc"`` -> ``"block.fc"``; a wrapper itself gets its inner
    module's name (``"block._checkpoint_wrapped_module"`` -> ``"block"``). Site names
    (``"path:relu#1"``) keep their suffix. Any other path is returned unchanged."""
    if "_" not in path:
        return path
    head, sep, tail = path.partition(":")
    kept = [part for part in head.split(".") if part not in WRAPPER_SEGMENTS]
    return ".".join(kept) + sep + tail


def plain_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{plain name: module}`` for every module of ``model`` (:func:`plain_name`). A wrapper
    and the module it wraps share a plain name; the innermost, the real layer, is kept."""
    return {plain_name(path): m for path, m in model.named_modules()}


def submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` that also takes a plain name (:func:`plain_name`): the
    real module a site, producer or consumer name refers to under wrappers (the innermost
    when a wrapper shares the name).

    Raises:
        AttributeError: as ``get_submodule`` does, when no module has that name.
    """
    module = plain_modules(model).get(name)
    if module is not None:
        return module
    try:
        return model.get_submodule(name)  # a real path (or a shared module's second path)
    except AttributeError:
        raise AttributeError(
            f"{type(model).__name__} has no module named {name!r} (nor one whose name is "
            "that once wrapper segments such as '_fsdp_wrapped_module.' are dropped)"
        ) from None


def _is_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` is a wrapper whose child sits under a :data:`WRAPPER_SEGMENTS`
    name (an FSDP1 unit, a checkpoint wrapper, a compiled submodule)."""
    return any(seg in module._modules for seg in WRAPPER_SEGMENTS)


def _fsdp1_class() -> type | None:
    """FSDP1's ``FullyShardedDataParallel``, or None when this torch has none."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # torch built without distributed
        return None
    return FullyShardedDataParallel


_FSDP1 = _fsdp1_class()


def fsdp1_modules(model: nn.Module) -> list[str]:
    """Plain names (:func:`plain_name`) of the FSDP1 ``FullyShardedDataParallel`` wrappers
    in ``model`` (``""``: the model itself), in module order."""
    if _FSDP1 is None:
        return []
    return [plain_name(n) for n, m in model.named_modules() if isinstance(m, _FSDP1)]


class _Tracer(fx.Tracer):
    """``torch.fx`` tracer that keeps every activation module as a leaf, and torch's own
    layers as leaves also when FSDP2's ``fully_shard`` swapped their class
    (:func:`plain_class`: fx's default test reads the class's module, which becomes
    ``torch.distributed.fsdp``, and would trace an ``FSDPLinear`` into ``linear()``)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if activation_module_spec(m) is not None:
            return True
        cls = plain_class(m)
        if cls is not type(m):
            origin = cls.__module__
            torch_layer = origin.startswith("torch.nn") or origin.startswith("torch.ao.nn")
            return torch_layer and not issubclass(cls, nn.Sequential)
        return bool(super().is_leaf_module(m, module_qualified_name))

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        # fx runs a traced-through module with its hooks; FSDP2's would all-gather (and on
        # the first call lazily initialise) the parameters on proxies and fail. They do
        # nothing the graph needs, so an FSDP module's own forward is traced instead.
        if _FSDP_MODULE is not None and isinstance(m, _FSDP_MODULE):
            forward = m.forward
        return super().call_module(m, forward, args, kwargs)


def activation_module_spec(m: nn.Module) -> ActivationSpec | None:
    """The registry spec of an activation module instance, or None."""
    return spec_for_module(m)


def trace(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` with ``torch.fx``, keeping activation modules and torch layers as leaves.

    Raises ``ValueError`` with advice when the model cannot be traced (data-dependent
    control flow in ``forward``).
    """
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        raise ValueError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}). "
            "deadrelu needs a traceable model here: nn.Sequential, nested Sequentials, or a "
            "forward without data-dependent Python control flow. Wrap the traceable part "
            "in its own module and pass that."
        ) from exc
    return fx.GraphModule(model, graph)


def _method_specs() -> dict[str, ActivationSpec]:
    table: dict[str, ActivationSpec] = {}
    for name in names():
        act = get(name)
        assert act is not None
        for meth in act.spec.tensor_methods:
            table[meth] = act.spec
    return table


def activation_spec_of(node: fx.Node, gm: fx.GraphModule) -> ActivationSpec | None:
    """The registry spec if ``node`` applies an activation (module, function or method)."""
    if node.op == "call_module":
        return activation_module_spec(gm.get_submodule(str(node.target)))
    if node.op == "call_function" and callable(node.target):
        return spec_for_function(node.target)
    if node.op == "call_method":
        return _method_specs().get(str(node.target))
    return None


def site_names(gm: fx.GraphModule) -> dict[fx.Node, tuple[str, ActivationSpec]]:
    """Every activation node of a traced model -> (site name, spec), in execution order.

    Names follow :mod:`deadrelu.capture`: a module site is the module path (``"net.3"``,
    as :func:`plain_name` gives it: no wrapper segments);
    a functional site is the path of the innermost module whose forward made the call, a
    colon and the registry name (``"block:relu"``, ``":relu"`` for the root's forward);
    the k-th repeat of a name gets ``#k`` (a reused module: ``"act"``, ``"act#1"``).
    """
    out: dict[fx.Node, tuple[str, ActivationSpec]] = {}
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        spec = activation_spec_of(node, gm)
        if spec is None:
            continue
        if node.op == "call_module":
            base = plain_name(str(node.target))
        else:
            stack = node.meta.get("nn_module_stack") or {}
            path = plain_name(next(reversed(stack))) if stack else ""
            base = f"{path}:{spec.name}"
        k = counts.get(base, 0)
        counts[base] = k + 1
        out[node] = (base if k == 0 else f"{base}#{k}", spec)
    return out


# ------------------------------------------------------------------------------------------
# Links: producer and consumers of every site
# ------------------------------------------------------------------------------------------

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PASS_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
_CHANNEL_KEEPING: tuple[type[nn.Module], ...] = (
    *_PASS_MODULES,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.batchnorm._BatchNorm,
)
_PASS_FUNCTIONS: set[Any] = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
#: Elementwise products (a gated unit, ``relu(up(x)) * gate(x)``): unit i stays unit i.
_GATES: set[Any] = {operator.mul, torch.mul}
_POOL_FUNCTIONS: set[Any] = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
}  # fmt: skip


@dataclass
class SiteLinks:
    """How one activation site connects to the layers around it. Every name is plain
    (:func:`plain_name`); :func:`submodule` finds the module under wrappers.

    Attributes:
        site: the site name (as :mod:`deadrelu.capture` names it).
        activation: the bound activation at the site.
        producer: path of the Linear/Conv feeding it, or None.
        norm: path of a BatchNorm between the producer and the activation, or None.
        consumers: ``(path, kind)`` of the layers reading its output; ``kind`` is
            ``"linear"``, ``"conv"`` or ``"flatten_linear"``.
        producer_problem: why the producer cannot be changed alone (None: it can).
        consumer_problem: why the consumers are not all known (None: they are).
    """

    site: str
    activation: Activation
    producer: str | None = None
    norm: str | None = None
    consumers: list[tuple[str, str]] = field(default_factory=list)
    producer_problem: str | None = None
    consumer_problem: str | None = None


def _describe(n: fx.Node) -> str:
    if n.op == "call_module":
        return f"module {plain_name(str(n.target))!r}"
    if n.op == "call_function":
        return f"{getattr(n.target, '__name__', n.target)}() (node {n.name!r})"
    if n.op == "call_method":
        return f".{n.target}() (node {n.name!r})"
    if n.op == "placeholder":
        return f"the model's input {n.name!r}"
    return f"{n.op} {n.name!r}"


def _is_flatten(gm: fx.GraphModule, n: fx.Node) -> bool:
    """A flatten that keeps dim 0 and merges the rest (channel-major blocks)."""
    if n.op == "call_module":
        m = gm.get_submodule(str(n.target))
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    if n.op == "call_function" and n.target is torch.flatten:
        start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
        return bool(start == 1 and len(n.args) <= 2)
    if n.op == "call_method" and n.target == "flatten":
        start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
        return bool(start == 1 and len(n.args) <= 2)
    if n.op == "call_method" and n.target in ("view", "reshape"):
        shape = n.args[1:]
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return bool(len(shape) == 2 and shape[1] == -1)
    return False


def link_sites(model: nn.Module) -> dict[str, SiteLinks]:
    """Trace ``model`` and link every activation site to its producer and consumers."""
    gm = trace(model)
    sites = site_names(gm)
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            name = plain_name(str(n.target))
            calls[name] = calls.get(name, 0) + 1
    out: dict[str, SiteLinks] = {}
    for node, (name, spec) in sites.items():
        act = get(gm.get_submodule(str(node.target))) if node.op == "call_module" else spec.bind()
        assert act is not None
        links = SiteLinks(site=name, activation=act)
        _link_back(gm, node, links, calls)
        _link_forward(gm, node, links, calls)
        _check_axes(gm, links)
        out[name] = links
    return out


def _link_back(gm: fx.GraphModule, node: fx.Node, links: SiteLinks, calls: dict[str, int]) -> None:
    chain: list[fx.Node] = [node]
    n = node.args[0] if node.args else None
    while isinstance(n, fx.Node):
        chain.append(n)
        if n.op == "call_module":
            m = gm.get_submodule(str(n.target))
            if isinstance(m, _PASS_MODULES):
                n = n.args[0]
                continue
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and links.norm is None:
                links.norm = plain_name(str(n.target))
                n = n.args[0]
                continue
            if isinstance(m, _AFFINE) and getattr(m, "groups", 1) == 1:
                links.producer = plain_name(str(n.target))
                if calls[links.producer] > 1:
                    links.producer_problem = f"{links.producer!r} is called more than once"
                elif links.norm is not None and calls[links.norm] > 1:
                    links.producer_problem = f"{links.norm!r} is called more than once"
                else:
                    # every node between the producer and the site must feed only the chain
                    for a, b in zip(chain[1:], chain[:-1], strict=False):
                        if len(a.users) > 1 or b not in a.users:
                            links.producer_problem = (
                                f"the output of {_describe(a)} is also used elsewhere"
                            )
                            break
                return
        elif n.op == "call_function" and n.target in _PASS_FUNCTIONS:
            n = n.args[0]
            continue
        links.producer_problem = f"the site is fed by {_describe(n)}, not a Linear/Conv layer"
        return
    links.producer_problem = "the site has no tensor input"


def _check_axes(root: nn.Module, links: SiteLinks) -> None:
    """A Conv's units are channels (dim 1), a Linear's the last dim: consumers must agree."""
    if links.producer is None or links.consumer_problem is not None:
        return
    conv = not isinstance(submodule(root, links.producer), nn.Linear)
    for path, kind in links.consumers:
        if conv and kind == "linear":
            links.consumer_problem = (
                f"Linear {path!r} reads the last dim of the Conv output, not its channels"
            )
        elif not conv and kind == "conv":
            links.consumer_problem = f"Conv {path!r} reads channels of a Linear output"
        if links.consumer_problem is not None:
            links.consumers = []
            return


def _link_forward(
    gm: fx.GraphModule, node: fx.Node, links: SiteLinks, calls: dict[str, int]
) -> None:
    stack: list[tuple[fx.Node, bool]] = [(node, False)]
    seen: set[fx.Node] = set()
    while stack:
        n, flat = stack.pop()
        for u in n.users:
            if u in seen:
                continue
            seen.add(u)
            problem = _forward_step(gm, u, flat, links, calls, stack)
            if problem is not None:
                links.consumer_problem = problem
                links.consumers = []
                return
    if not links.consumers:
        links.consumer_problem = "the site's output is not read by any Linear/Conv layer"


def _forward_step(
    gm: fx.GraphModule,
    u: fx.Node,
    flat: bool,
    links: SiteLinks,
    calls: dict[str, int],
    stack: list[tuple[fx.Node, bool]],
) -> str | None:
    if u.op == "output":
        return "its output reaches the model's output (the output layer is never recycled)"
    if _is_flatten(gm, u):
        if flat:
            return f"it is flattened twice ({_describe(u)})"
        stack.append((u, True))
        return None
    if u.op == "call_module":
        m = gm.get_submodule(str(u.target))
        path = plain_name(str(u.target))
        if isinstance(m, nn.Linear) or (
            isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups == 1 and not flat
        ):
            if calls[path] > 1:
                return f"consumer {path!r} is called more than once"
            if u.args[0] is not None and len(u.args) == 1:
                kind = "conv" if not isinstance(m, nn.Linear) else "linear"
                links.consumers.append((path, "flatten_linear" if flat else kind))
                return None
        if isinstance(m, _CHANNEL_KEEPING) or get_or_none(m) is not None:
            if flat and not isinstance(m, _PASS_MODULES) and get_or_none(m) is None:
                return f"{_describe(u)} after a flatten"
            stack.append((u, flat))
            return None
        return f"its output reaches {_describe(u)} ({type(m).__name__})"
    if u.op == "call_function" and (
        u.target in _PASS_FUNCTIONS or u.target in _POOL_FUNCTIONS or u.target in _GATES
    ):
        stack.append((u, flat))
        return None
    return f"its output reaches {_describe(u)}"


def get_or_none(m: nn.Module) -> Activation | None:
    """The bound activation of an activation module, or None for any other module."""
    return get(m) if spec_for_module(m) is not None else None


# ------------------------------------------------------------------------------------------
# The probe fallback: which module produced which tensor, during one real forward
# ------------------------------------------------------------------------------------------

PRODUCER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
)


def tensor_key(t: Tensor) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Identity of a tensor's data (detach() makes a new object over the same memory)."""
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()))


def is_producer(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(module, PRODUCER_TYPES) and isinstance(weight, Tensor)


class ProducerProbe:
    """Records which producer module returned which tensor, during ordinary forwards.

    Registers a forward hook on every producer module of ``model`` (:func:`is_producer`:
    Linear, Bilinear, Conv, norms); :meth:`producer` then maps a tensor seen later in the
    same forward (an activation's input ``z``) to the module that returned it, by identity
    of memory (:func:`tensor_key`: data pointer, shape, strides), never by shape. The
    recorded outputs are kept alive until :meth:`remove`, so no two of them share an
    identity. Use as a context manager, or call :meth:`remove` in a ``finally``.
    """

    def __init__(self, model: nn.Module) -> None:
        self._outputs: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
        self._keep: list[Tensor] = []
        self._handles: list[RemovableHandle] = [
            m.register_forward_hook(self._record(plain_name(name)))
            for name, m in model.named_modules()
            if is_producer(m)
        ]

    def _record(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, Tensor):
                self._outputs[tensor_key(out)] = name
                self._keep.append(out)

        return hook

    def producer(self, z: Tensor) -> str | None:
        """The name of the module whose output *is* ``z``, or None (a sum, a reshape, an
        in-place op, a copy)."""
        return self._outputs.get(tensor_key(z))

    def remove(self) -> None:
        """Remove the hooks and release the recorded outputs."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._keep.clear()
        self._outputs.clear()

    def __enter__(self) -> ProducerProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


# ------------------------------------------------------------------------------------------
# Links by probe: producer and consumers of every site, from one real forward
# ------------------------------------------------------------------------------------------

Key = tuple[int, tuple[int, ...], tuple[int, ...]]

#: Calls that read a tensor's metadata (or alias it) without using its values: never a use.
_METADATA = frozenset(
    {
        "size", "dim", "numel", "__get__", "detach", "stride", "is_contiguous",
        "is_floating_point", "is_complex", "data_ptr", "element_size", "ndimension",
        "nelement", "__len__", "get_device", "storage_offset", "untyped_storage",
        "__format__", "__repr__", "_is_view",
        # deadrelu.capture copies z into scratch memory before an in-place activation
        "copy_",
    }
)  # fmt: skip
_FLATTENS = frozenset({"flatten", "view", "reshape"})
#: Functions (by name, as a torch-function mode sees them) that keep unit i at unit i.
_PASS_NAMES = frozenset(
    {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "contiguous"}
)
_GATE_NAMES = frozenset({"mul", "__mul__", "__rmul__"})


def _passes(c: _Call) -> bool:
    return c.name in _PASS_NAMES or "pool" in c.name


def _tensors(obj: Any) -> list[Tensor]:
    """The tensors of an argument or output: itself, or the items of a list / tuple / dict
    (a Hugging Face ``ModelOutput`` is a dict), one level deep."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for t in obj if isinstance(t, Tensor)]
    if isinstance(obj, dict):
        return [t for t in obj.values() if isinstance(t, Tensor)]
    return []


@dataclass(eq=False)
class _Call:
    """One module or function call seen by :class:`LinkProbe`."""

    seq: int  # when it was entered
    kind: str  # "module" or "function"
    name: str  # module path, or function name
    target: Any  # the module, or the function
    inputs: list[Key]  # tensor arguments, positional first
    outputs: list[Key] = field(default_factory=list)
    done: int = -1  # when it returned
    flatten: bool = False  # (N, C, *) -> (N, C * rest)
    leaf: bool = True  # a module without children (functions: always)

    def describe(self) -> str:
        if self.kind == "module":
            return f"module {self.name!r} ({type(self.target).__name__})"
        return f"{self.name}()"


class _LinkMode(TorchFunctionMode):
    def __init__(self, probe: LinkProbe) -> None:
        super().__init__()
        self.probe = probe

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        name = str(getattr(func, "__name__", func))
        probe = self.probe
        if name in _METADATA or probe.in_leaf():
            return func(*args, **kwargs)
        given = [t for a in (*args, *kwargs.values()) for t in _tensors(a)]
        call = _Call(probe.tick(), "function", name, func, [tensor_key(t) for t in given])
        probe.enter(call)
        out = func(*args, **kwargs)
        made = _tensors(out)
        if name in _FLATTENS and given and made:
            a, b = given[0], made[0]
            call.flatten = a.dim() >= 3 and b.dim() == 2 and a.shape[0] == b.shape[0]
        probe.leave(call, made)
        return out


class LinkProbe:
    """Links every activation site to its producer and consumers by one real forward, for
    models ``torch.fx`` cannot trace (every Hugging Face model).

    While active (a context manager) it records every module call (hooks) and every torch
    function call (a :class:`~torch.overrides.TorchFunctionMode`) with the identity of the
    tensors they read and return (:func:`tensor_key`: memory, shape, strides), keeping those
    tensors alive so that identities are not reused. :meth:`on_site` is a capture callback
    (``deadrelu.capture.attach(model, probe.on_site)``): it marks each activation call.
    The calls recorded are those of *leaf* modules (no children: ``nn.Linear``,
    ``nn.ReLU``...; the torch functions they call inside are theirs) and the torch
    functions called by container modules' forwards (``x + residual``, ``F.relu``);
    containers themselves are transparent, as in a ``torch.fx`` graph.

    :meth:`links` then applies the rules of :func:`link_sites` to what happened: the
    producer is the Linear / Conv whose output reaches the activation through Dropout /
    Identity and at most one BatchNorm, each used by nothing else; the consumers are the
    Linear / Conv layers reading the output through Dropout, Identity, pooling, BatchNorm,
    other activations, elementwise gates and one flatten, and nothing else may read it
    (a residual sum, the model's output): otherwise ``consumer_problem`` says what did.
    Only what ran in this forward is seen: a branch the batch did not take is unknown.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._seq = 0
        self._stack: list[_Call] = []
        self._uses: dict[Key, list[_Call]] = {}
        self._made: dict[Key, list[_Call]] = {}
        self._calls_of: dict[str, int] = {}
        self._keep: list[Tensor] = []
        self._outputs: set[Key] = set()
        self._sites: list[tuple[str, Activation, int, Key, Key]] = []
        self._mode = _LinkMode(self)
        self._handles: list[RemovableHandle] = []
        for path, m in model.named_modules():
            if _is_wrapper(m):  # transparent; its plain name is the wrapped module's
                continue
            self._handles.append(
                m.register_forward_pre_hook(self._pre(plain_name(path)), with_kwargs=True)
            )
            self._handles.append(m.register_forward_hook(self._post(), always_call=True))

    def tick(self) -> int:
        self._seq += 1
        return self._seq

    def in_leaf(self) -> bool:
        """Whether a leaf module's forward is running (its inner calls are its own)."""
        return bool(self._stack) and self._stack[-1].leaf

    def enter(self, call: _Call) -> None:
        """Record ``call``'s uses of its inputs (a container uses nothing itself)."""
        if call.leaf:
            for k in dict.fromkeys(call.inputs):
                self._uses.setdefault(k, []).append(call)

    def leave(self, call: _Call, made: list[Tensor]) -> None:
        call.done = self.tick()
        call.outputs = [tensor_key(t) for t in made]
        self._keep.extend(made)
        if call.leaf:
            for k in call.outputs:
                self._made.setdefault(k, []).append(call)

    def _pre(self, path: str) -> Callable[..., None]:
        def hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self.in_leaf():
                return  # a module called inside a leaf module's forward is the leaf's
            with torch._C.DisableTorchFunction():
                given = [t for a in (*args, *kwargs.values()) for t in _tensors(a)]
                self._keep.extend(given)
                call = _Call(self.tick(), "module", path, m, [tensor_key(t) for t in given])
                call.leaf = next(iter(m.children()), None) is None
                if isinstance(m, nn.Flatten) and call.inputs:
                    call.flatten = m.start_dim == 1 and m.end_dim == -1
                self.enter(call)
                self._calls_of[path] = self._calls_of.get(path, 0) + 1
                self._stack.append(call)

        return hook

    def _post(self) -> Callable[..., None]:
        def hook(m: nn.Module, args: Any, out: Any) -> None:
            if not self._stack or all(c.target is not m for c in self._stack):
                return
            with torch._C.DisableTorchFunction():
                call = self._stack.pop()
                while call.target is not m:
                    call = self._stack.pop()
                made = _tensors(out)
                self.leave(call, made)
                if not self._stack:
                    self._outputs.update(call.outputs)

        return hook

    def on_site(self, site: Any, z: Tensor, out: Tensor) -> None:
        """Capture callback: ``site`` has ``.name`` and ``.activation``; ``z``, ``out`` as
        :func:`deadrelu.capture.attach` passes them."""
        self._sites.append(
            (str(site.name), site.activation, self.tick(), tensor_key(z), tensor_key(out))
        )

    def __enter__(self) -> LinkProbe:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(None, None, None)
        self.remove()

    def remove(self) -> None:
        """Remove the hooks and release the recorded tensors (the links stay readable)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._keep.clear()

    # -- resolution ---------------------------------------------------------------------

    def _last_made(self, k: Key, before: int) -> _Call | None:
        found = None
        for c in self._made.get(k, []):
            if c.done < before:
                found = c
        return found

    def _uses_after(self, k: Key, made: _Call | None, after: int) -> list[_Call]:
        """Uses of ``k`` from ``after`` until the next call that writes ``k`` (in place)."""
        end = min((c.done for c in self._made.get(k, []) if c.done > after), default=None)
        return [
            u
            for u in self._uses.get(k, [])
            if u.seq > after and (end is None or u.seq < end) and u is not made
        ]

    def links(self) -> dict[str, SiteLinks]:
        """``{site: SiteLinks}`` for every site seen (its first call), as :func:`link_sites`."""
        out: dict[str, SiteLinks] = {}
        for name, act, seq, zk, ok in self._sites:
            if name in out:
                continue
            lk = SiteLinks(site=name, activation=act)
            call = self._last_made(ok, seq)
            if call is None:
                lk.producer_problem = lk.consumer_problem = "the activation call was not seen"
                out[name] = lk
                continue
            if ok in call.inputs:  # in place: capture handed over a copy of z
                zk = ok
            self._probe_back(lk, zk, call)
            self._probe_forward(lk, ok, call)
            _check_axes(self._model, lk)
            out[name] = lk
        return out

    def _probe_back(self, lk: SiteLinks, k: Key, user: _Call) -> None:
        shared: str | None = None
        while True:
            c = self._last_made(k, user.seq)
            if c is None:
                lk.producer_problem = "the site is fed by the model's input or an untracked tensor"
                return
            others = [u for u in self._uses_after(k, None, c.done) if u is not user]
            if others and shared is None:
                shared = f"the output of {c.describe()} is also used by {others[0].describe()}"
            m = c.target
            if c.kind == "module" and isinstance(m, _PASS_MODULES) and c.inputs:
                k, user = c.inputs[0], c
                continue
            bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
            if c.kind == "module" and bn and lk.norm is None and c.inputs:
                lk.norm = c.name
                k, user = c.inputs[0], c
                continue
            if c.kind == "function" and c.name in _PASS_NAMES and c.inputs:
                k, user = c.inputs[0], c
                continue
            if c.kind == "module" and isinstance(m, _AFFINE) and getattr(m, "groups", 1) == 1:
                lk.producer = c.name
                if self._calls_of.get(c.name, 0) > 1:
                    lk.producer_problem = f"{c.name!r} is called more than once"
                elif lk.norm is not None and self._calls_of.get(lk.norm, 0) > 1:
                    lk.producer_problem = f"{lk.norm!r} is called more than once"
                else:
                    lk.producer_problem = shared
                return
            lk.producer_problem = f"the site is fed by {c.describe()}, not a Linear/Conv layer"
            return

    def _probe_forward(self, lk: SiteLinks, k: Key, call: _Call) -> None:
        stack: list[tuple[Key, _Call, bool]] = [(k, call, False)]
        seen: set[int] = set()
        while stack:
            k, made, flat = stack.pop()
            if k in self._outputs:
                lk.consumer_problem = (
                    "its output reaches the model's output (the output layer is never recycled)"
                )
            for u in self._uses_after(k, made, made.done):
                if id(u) in seen or lk.consumer_problem is not None:
                    continue
                seen.add(id(u))
                lk.consumer_problem = self._step(u, k, flat, lk, stack)
            if lk.consumer_problem is not None:
                lk.consumers = []
                return
        if not lk.consumers:
            lk.consumer_problem = "the site's output is not read by any Linear/Conv layer"

    def _step(
        self, u: _Call, k: Key, flat: bool, lk: SiteLinks, stack: list[tuple[Key, _Call, bool]]
    ) -> str | None:
        nxt = u.outputs[0] if u.outputs else None
        if u.flatten and nxt:
            if flat:
                return f"it is flattened twice ({u.describe()})"
            stack.append((nxt, u, True))
            return None
        if u.kind == "module":
            m = u.target
            if isinstance(m, nn.Linear) or (isinstance(m, _AFFINE) and m.groups == 1 and not flat):
                if self._calls_of.get(u.name, 0) > 1:
                    return f"consumer {u.name!r} is called more than once"
                if u.inputs == [k]:
                    kind = "linear" if isinstance(m, nn.Linear) else "conv"
                    lk.consumers.append((u.name, "flatten_linear" if flat else kind))
                    return None
            if (isinstance(m, _CHANNEL_KEEPING) or get_or_none(m) is not None) and nxt:
                if flat and not isinstance(m, _PASS_MODULES) and get_or_none(m) is None:
                    return f"{u.describe()} after a flatten"
                stack.append((nxt, u, flat))
                return None
            return f"its output reaches {u.describe()}"
        if nxt and (_passes(u) or u.name in _GATE_NAMES):
            stack.append((nxt, u, flat))
            return None
        return f"its output reaches {u.describe()}"
