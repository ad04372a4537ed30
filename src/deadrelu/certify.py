"""Certified dead units: z < 0 for *every* input of a box, by bound propagation.

The notes define a dead unit as one that outputs 0 "for any input value" (C1). Detection
over data (:mod:`deadrelu.scan`) can only say "on the inputs seen"; this module proves it
for a whole input domain. Given a box ``B = {x : lower <= x <= upper}`` (per-feature
bounds, e.g. ``[0, 1]`` for images or the data's min and max), it propagates an interval
``[l, u]`` for every intermediate value through the network (interval bound propagation,
IBP: Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for Training
Verifiably Robust Models") and reports, at every activation site, the units whose
pre-activation upper bound is below zero: **certified dead**, i.e. z < 0 for every x in B.

Two methods. ``"ibp"`` propagates one interval per value. ``"symbolic"`` (the default)
also propagates, per value, a lower and an upper *linear function of the input* (the
forward linear relaxation of CROWN / DeepPoly without back-substitution: Zhang et al.
2018, "Efficient Neural Network Robustness Certification with General Activation
Functions"; Singh et al. 2019, "An Abstract Domain for Certifying Neural Networks"):
affine layers map them exactly, ReLU / leaky ReLU / PReLU / eval-mode RReLU get CROWN's
relaxation (the chord above, ``lam z`` below), and at every value the two methods'
bounds are intersected, so it is never looser than IBP; it sees cancellations IBP cannot
(``relu(x) - relu(x)``). Other activations, max pooling and products fall back to the
IBP interval at that value (a constant linear bound) and the symbolic bounds go on from
there. The coefficients cost ``D`` (input features) times each layer's size; a layer
above ``max_coefficients`` continues with IBP.

Soundness. Each rule returns bounds that contain every value the real layer can produce
when its input lies in the input bounds, so ``u`` is an upper bound of z over B. Bounds
are computed in float64 and a unit is certified only when ``u < -atol`` (default
``atol = 1e-5``), a margin for the float32 rounding of the model's own forward. A
certificate may miss dead units (the bounds loosen with depth) but never claims a unit
dead that some input of B activates. The certificate is about the model in **eval
mode**: Dropout is the identity and BatchNorm uses its running statistics.

Supported graphs. The model is traced with ``torch.fx`` (activation modules and the layers
below are kept as leaves), so ``nn.Sequential``, nested Sequentials, and custom modules
whose ``forward`` has no data-dependent Python control flow are supported, including
residual additions ``x + f(x)``, concatenation and reshapes. Supported operations:

* affine: ``nn.Linear``, ``nn.Conv1d/2d/3d`` (any padding mode), ``F.linear``,
  ``nn.BatchNorm1d/2d/3d`` with running statistics (per channel, any sign of scale);
* monotone / shape: ``nn.Flatten``, ``nn.Unflatten``, ``nn.Identity``, ``nn.Dropout*``,
  max / average / adaptive pooling (modules and ``F.*`` calls), ``flatten``, ``view``,
  ``reshape``, ``squeeze``, ``unsqueeze``, ``permute``, ``transpose``, ``contiguous``,
  ``mean``, ``sum``, indexing, ``torch.cat``;
* arithmetic: ``+``, ``-`` (interval or constant), multiplication / division by a constant,
  product of two intervals, negation;
* every activation of :mod:`deadrelu.activations`, as module, function or tensor method
  (exact bounds: endpoints, 0, and the activation's stationary points such as GELU's
  minimum at z ~ -0.75).

Anything else (LayerNorm, attention, BatchNorm without running statistics, an unknown
function) raises ``ValueError`` naming the layer: never a wrong certificate.

Units and names follow :mod:`deadrelu.capture`, so a certificate and a scan report line
up site by site: the unit axis is the features of ``(N, U)``, the channels of
``(N, C, H, W)`` (the last dim of ``(N, L, D)`` after a Linear); a channel is certified
dead when every position is. Module sites are named by module path (``"net.3"``),
functional ones ``"block:relu"`` (innermost module path, colon, registry name), and the
k-th repeat of a name gets ``#k`` (a reused ``nn.ReLU``: ``"act"``, ``"act#1"``).
"""

from __future__ import annotations

import copy
import itertools
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from deadrelu.activations import Activation, ActivationSpec, get
from deadrelu.graph import (
    activation_spec_of,
    default_unit_dim,
    producer_axis,
    site_names,
    trace,
)
from deadrelu.report import html_table, tensor_from_json, tensor_to_json

__all__ = [
    "METHODS",
    "Box",
    "Certificate",
    "Interval",
    "SiteBounds",
    "activation_spec_of",
    "certify",
    "site_names",
    "trace",
]

_DTYPE = torch.float64
#: Certification methods: symbolic linear bounds (tighter) and plain IBP.
METHODS = ("symbolic", "ibp")


# --------------------------------------------------------------------------------------
# Tracing (shared with deadrelu.remedies)
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Boxes and intervals
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """An input domain ``{x : lower <= x <= upper}``, one sample's shape ``(*S)`` (no batch).

    Build one with :meth:`from_bounds` (scalar or per-feature bounds and the input shape) or
    :meth:`from_data` (per-feature min and max of a data tensor ``(N, *S)``).
    """

    lower: Tensor
    upper: Tensor

    def __post_init__(self) -> None:
        if self.lower.shape != self.upper.shape:
            raise ValueError(
                f"box bounds differ in shape: {tuple(self.lower.shape)} vs "
                f"{tuple(self.upper.shape)}"
            )
        if bool((self.lower > self.upper).any()):
            raise ValueError("box has lower > upper somewhere: swap the bounds")
        if not (bool(torch.isfinite(self.lower).all()) and bool(torch.isfinite(self.upper).all())):
            raise ValueError("box bounds must be finite (IBP needs a bounded domain)")

    @classmethod
    def from_bounds(cls, shape: Sequence[int], lower: float | Tensor, upper: float | Tensor) -> Box:
        """A box of one sample's ``shape`` with scalar or broadcastable bounds."""
        lo = torch.broadcast_to(torch.as_tensor(lower, dtype=_DTYPE), tuple(shape)).clone()
        hi = torch.broadcast_to(torch.as_tensor(upper, dtype=_DTYPE), tuple(shape)).clone()
        return cls(lo, hi)

    @classmethod
    def from_data(cls, data: Tensor | Iterable[Tensor]) -> Box:
        """Per-feature min and max over the batch dim of ``(N, *S)`` tensors (or batches)."""
        if isinstance(data, Tensor):
            data = [data]
        lo: Tensor | None = None
        hi: Tensor | None = None
        for batch in data:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x.detach().to(_DTYPE)
            b_lo, b_hi = x.amin(dim=0).cpu(), x.amax(dim=0).cpu()
            lo = b_lo if lo is None else torch.minimum(lo, b_lo)
            hi = b_hi if hi is None else torch.maximum(hi, b_hi)
        if lo is None or hi is None:
            raise ValueError("Box.from_data got no batches")
        return cls(lo, hi)

    @property
    def shape(self) -> torch.Size:
        """One sample's shape ``(*S)``."""
        return self.lower.shape

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` points drawn uniformly from the box, ``(n, *S)`` float32 (for tests)."""
        u = torch.rand((n, *self.shape), generator=generator, dtype=_DTYPE)
        return (self.lower + u * (self.upper - self.lower)).to(torch.float32)


@dataclass(frozen=True)
class Interval:
    """Elementwise bounds ``lo <= x <= hi`` of a batched tensor, both ``(1, *S)`` float64."""

    lo: Tensor
    hi: Tensor

    @property
    def mid(self) -> Tensor:
        return (self.lo + self.hi) / 2

    @property
    def rad(self) -> Tensor:
        return (self.hi - self.lo) / 2

    @classmethod
    def from_mid_rad(cls, mid: Tensor, rad: Tensor) -> Interval:
        return cls(mid - rad, mid + rad)

    def map(self, fn: Callable[[Tensor], Tensor]) -> Interval:
        """Apply a monotone non-decreasing (or shape-only) ``fn`` to both ends."""
        return Interval(fn(self.lo), fn(self.hi))


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass
class SiteBounds:
    """Bounds of one activation site's pre-activation z over the box, per unit ``(U,)``.

    ``lower[i]`` / ``upper[i]``: min / max over positions of unit i of its bounds on z.
    ``certified_dead[i]``: ``upper[i] < -atol``, so z < 0 at every position for every input.
    """

    site: str
    activation: str
    lower: Tensor
    upper: Tensor
    certified_dead: Tensor
    unit_dim: int = 1

    def dead_units(self) -> list[int]:
        """Indices of the certified-dead units."""
        return [int(i) for i in torch.nonzero(self.certified_dead).flatten()]


CERTIFICATE_SCHEMA = "deadrelu.certificate/1"


def _json_float(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


@dataclass
class Certificate:
    """The result of :func:`certify`: per-site bounds over an input box.

    ``sites`` maps site name -> :class:`SiteBounds`, in the order the sites run.
    """

    box: Box
    method: str
    atol: float
    sites: dict[str, SiteBounds] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def dead_units(self, site: str) -> list[int]:
        """Certified-dead unit indices at ``site``."""
        if site not in self.sites:
            raise KeyError(f"no activation site {site!r}; sites: {', '.join(self.sites)}")
        return self.sites[site].dead_units()

    @property
    def n_certified(self) -> int:
        """Number of certified-dead units over all sites."""
        return sum(int(s.certified_dead.sum()) for s in self.sites.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: method, atol, the box (shape and bounds), notes and per site the
        certified units and the lower and upper bounds of z; :meth:`from_dict` rebuilds."""
        return {
            "schema": CERTIFICATE_SCHEMA,
            "method": self.method,
            "atol": self.atol,
            "box_shape": list(self.box.shape),
            "box": {
                "lower": tensor_to_json(self.box.lower),
                "upper": tensor_to_json(self.box.upper),
            },
            "notes": list(self.notes),
            "sites": {
                s.site: {
                    "activation": s.activation,
                    "unit_dim": s.unit_dim,
                    "units": int(s.upper.numel()),
                    "certified_dead": s.dead_units(),
                    "upper": [_json_float(v) for v in s.upper.tolist()],
                    "lower": [_json_float(v) for v in s.lower.tolist()],
                }
                for s in self.sites.values()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Certificate:
        """Rebuild from :meth:`to_dict`."""
        if not isinstance(data, Mapping) or data.get("schema") != CERTIFICATE_SCHEMA:
            raise ValueError(
                f"not a certificate dict (schema {CERTIFICATE_SCHEMA!r} expected): was it "
                "made by Certificate.to_dict()?"
            )
        box = Box(tensor_from_json(data["box"]["lower"]), tensor_from_json(data["box"]["upper"]))
        sites: dict[str, SiteBounds] = {}
        for name, e in data["sites"].items():
            dead = torch.zeros(int(e["units"]), dtype=torch.bool)
            dead[torch.as_tensor(e["certified_dead"], dtype=torch.int64)] = True
            sites[name] = SiteBounds(
                site=name,
                activation=e["activation"],
                lower=torch.tensor([float(v) for v in e["lower"]], dtype=_DTYPE),
                upper=torch.tensor([float(v) for v in e["upper"]], dtype=_DTYPE),
                certified_dead=dead,
                unit_dim=int(e["unit_dim"]),
            )
        return cls(box, data["method"], float(data["atol"]), sites, list(data["notes"]))

    def __repr__(self) -> str:
        units = sum(s.certified_dead.numel() for s in self.sites.values())
        return (
            f"Certificate(method={self.method!r}, box={tuple(self.box.shape)}, "
            f"sites={len(self.sites)}, certified_dead={self.n_certified}/{units})"
        )

    def _repr_html_(self) -> str:
        rows = [
            [s.site, s.activation, s.certified_dead.numel(), int(s.certified_dead.sum())]
            for s in self.sites.values()
        ]
        title = f"deadrelu certificate ({self.method}) over a box of shape {tuple(self.box.shape)}"
        return html_table(title, ["site", "activation", "units", "certified dead"], rows)

    def summary(self) -> str:
        """One line per site: certified-dead count out of units."""
        lines = [f"certificate ({self.method}) over a box of shape {tuple(self.box.shape)}:"]
        for s in self.sites.values():
            lines.append(
                f"  {s.site} ({s.activation}): {int(s.certified_dead.sum())} / "
                f"{s.certified_dead.numel()} units certified dead"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Activation bounds
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _stationary_points(act_key: str) -> tuple[float, ...]:
    """Points where f' changes sign (local extrema), by a grid and bisection on f'."""
    act = get(act_key)
    assert act is not None
    grid = torch.linspace(-40.0, 40.0, 16001, dtype=_DTYPE)
    d = act.derivative(grid)
    sign = torch.sign(d)
    points: list[float] = []
    nz = torch.nonzero(sign != 0).flatten().tolist()
    for a, b in itertools.pairwise(nz):
        if sign[a] * sign[b] < 0:
            lo, hi = float(grid[a]), float(grid[b])
            s_lo = float(sign[a])
            for _ in range(80):
                m = (lo + hi) / 2
                dm = float(act.derivative(torch.tensor([m], dtype=_DTYPE))[0])
                if dm == 0:
                    lo = hi = m
                    break
                if math.copysign(1.0, dm) == s_lo:
                    lo = m
                else:
                    hi = m
            points.extend([lo, hi])
    return tuple(points)


def _activation_bounds(
    f: Callable[[Tensor], Tensor], act: Activation | None, z: Interval
) -> Interval:
    """Exact bounds of elementwise ``f`` over ``[z.lo, z.hi]``.

    ``f`` is monotone between consecutive candidate points (0, the activation's stationary
    points), so its min and max over an interval are attained at the endpoints or at a
    candidate inside it.
    """
    cands = [0.0]
    if act is not None:
        cands.extend(_stationary_points(str(act)))
    lo, hi = f(z.lo.clone()), f(z.hi.clone())
    out_lo, out_hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
    for c in cands:
        inside = (z.lo <= c) & (c <= z.hi)
        if not bool(inside.any()):
            continue
        fc = f(torch.full_like(z.lo, c))
        out_lo = torch.where(inside, torch.minimum(out_lo, fc), out_lo)
        out_hi = torch.where(inside, torch.maximum(out_hi, fc), out_hi)
    return Interval(out_lo, out_hi)


def _bound_activation_params(
    spec: ActivationSpec, args: Sequence[Any], kwargs: dict[str, Any]
) -> Activation:
    """Best-effort parameters of a functional activation call (for stationary points)."""
    names_ = [p.name for p in spec.params]
    pos = [a for a in args if isinstance(a, (int, float, str)) and not isinstance(a, bool)]
    kw = {k: v for k, v in kwargs.items() if k in names_}
    try:
        return spec.bind(*pos[: len(names_)], **kw)
    except ValueError:
        return spec.bind()


# --------------------------------------------------------------------------------------
# The interpreter
# --------------------------------------------------------------------------------------

_SHAPE_METHODS = {
    "view", "reshape", "flatten", "unsqueeze", "squeeze", "permute", "transpose",
    "contiguous", "expand", "expand_as", "view_as", "reshape_as", "__getitem__",
}  # fmt: skip
_MONOTONE_METHODS = {"mean", "sum", "clamp", "clamp_min", "clamp_max", "clip"}
_SHAPE_FUNCTIONS: set[Any] = {
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute,
    torch.transpose, operator.getitem, torch.mean, torch.sum, torch.clamp, torch.clip,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
}  # fmt: skip
_IDENTITY_FUNCTIONS: set[Any] = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
_MONOTONE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Flatten, nn.Unflatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_IDENTITY_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)  # fmt: skip


_ARITHMETIC: set[Any] = {
    operator.add, torch.add, operator.iadd, operator.sub, torch.sub, operator.isub,
    operator.mul, torch.mul, operator.imul, operator.truediv, torch.div,
}  # fmt: skip


def _unsupported(what: str) -> ValueError:
    return ValueError(
        f"certify: {what} is not supported by interval bound propagation, so no certificate "
        "can be given for this model. Supported: Linear, Conv1d/2d/3d, BatchNorm (eval, "
        "running stats), pooling, flatten/reshape, residual additions, concatenation and "
        "the activations of deadrelu.activations. Certify the supported sub-network instead."
    )


def _is_iv(x: Any) -> bool:
    return isinstance(x, Interval)


def _any_iv(args: Iterable[Any]) -> bool:
    for a in args:
        if _is_iv(a):
            return True
        if isinstance(a, (list, tuple)) and _any_iv(a):
            return True
    return False


def _const(x: Any) -> Any:
    return x.detach().to(_DTYPE) if isinstance(x, Tensor) and x.is_floating_point() else x


def _add(a: Any, b: Any, sign: float = 1.0) -> Interval:
    if _is_iv(a) and _is_iv(b):
        if sign > 0:
            return Interval(a.lo + b.lo, a.hi + b.hi)
        return Interval(a.lo - b.hi, a.hi - b.lo)
    if _is_iv(a):
        c = _const(b)
        return Interval(a.lo + sign * c, a.hi + sign * c)
    # constant +/- interval
    c = _const(a)
    if sign > 0:
        return Interval(c + b.lo, c + b.hi)
    return Interval(c - b.hi, c - b.lo)


def _mul(a: Any, b: Any) -> Interval:
    if _is_iv(a) and _is_iv(b):
        p = torch.stack([a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi])
        return Interval(p.amin(0), p.amax(0))
    iv, c = (a, _const(b)) if _is_iv(a) else (b, _const(a))
    c_t = torch.as_tensor(c, dtype=_DTYPE)
    return Interval.from_mid_rad(iv.mid * c_t, iv.rad * c_t.abs())


def _linear(x: Interval, weight: Tensor, bias: Tensor | None) -> Interval:
    w = weight.detach().to(_DTYPE)
    b = None if bias is None else bias.detach().to(_DTYPE)
    return Interval.from_mid_rad(F.linear(x.mid, w, b), F.linear(x.rad, w.abs()))


def _module_bounds(m: nn.Module, path: str, x: Interval) -> Interval:
    if isinstance(m, nn.Linear):
        return _linear(x, m.weight, m.bias)
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        w = m.weight.detach().to(_DTYPE)
        b = None if m.bias is None else m.bias.detach().to(_DTYPE)
        mid = m._conv_forward(x.mid, w, b)
        rad = m._conv_forward(x.rad, w.abs(), None)
        return Interval.from_mid_rad(mid, rad)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if m.running_mean is None or m.running_var is None:
            raise _unsupported(
                f"layer {path!r} ({type(m).__name__} without running statistics, "
                "track_running_stats=False)"
            )
        var = m.running_var.detach().to(_DTYPE)
        scale = 1.0 / torch.sqrt(var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight.detach().to(_DTYPE)
        shift = -m.running_mean.detach().to(_DTYPE) * scale
        if m.bias is not None:
            shift = shift + m.bias.detach().to(_DTYPE)
        shape = (1, -1) + (1,) * (x.lo.dim() - 2)
        return Interval.from_mid_rad(
            x.mid * scale.view(shape) + shift.view(shape), x.rad * scale.abs().view(shape)
        )
    if isinstance(m, _IDENTITY_MODULES):
        return x
    if isinstance(m, _MONOTONE_MODULES):
        if getattr(m, "return_indices", False):
            raise _unsupported(f"layer {path!r} ({type(m).__name__} with return_indices=True)")
        return x.map(m)
    raise _unsupported(f"layer {path!r} ({type(m).__name__})")


def _per_unit(t: Tensor, reduce: str, dim: int) -> Tensor:
    """``(1, *)`` -> ``(U,)`` by max or min over every dim but ``dim`` (the unit axis)."""
    if t.dim() <= 1:
        return t.reshape(-1)
    t = t.movedim(dim, 0)
    t = t.reshape(t.shape[0], -1)
    return t.amax(dim=1) if reduce == "max" else t.amin(dim=1)


def _producer_kind(gm: fx.GraphModule, node: fx.Node, current: int | None) -> int | None:
    """The unit axis implied by ``node`` if it is a producer (rule of :mod:`deadrelu.capture`)."""
    if node.op == "call_module":
        axis = producer_axis(gm.get_submodule(str(node.target)))
    elif node.op == "call_function" and callable(node.target):
        axis = producer_axis(node.target)
    else:
        axis = None
    return current if axis is None else axis


# --------------------------------------------------------------------------------------
# Symbolic linear bounds (method="symbolic")
# --------------------------------------------------------------------------------------


@dataclass
class _Sym:
    """Linear bounds in the input x (flattened, D features) of a value ``(1, *S)``:

    ``la . x + lc <= value <= ua . x + uc`` elementwise, with ``la``, ``ua`` of shape
    ``(D, *S)`` (None: zero, a constant bound) and ``lc``, ``uc`` of shape ``(1, *S)``.
    """

    la: Tensor | None
    lc: Tensor
    ua: Tensor | None
    uc: Tensor


def _opt_add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _opt_apply(f: Callable[[Tensor], Tensor] | None, t: Tensor | None) -> Tensor | None:
    return None if f is None or t is None else f(t)


class _SymCtx:
    """The box as ``(D,)`` centre and radius, and the memory limit of the coefficients."""

    def __init__(self, box: Box, limit: int, device: torch.device) -> None:
        self.device = device
        self.mid = ((box.lower + box.upper) / 2).to(device, _DTYPE).flatten()
        self.rad = ((box.upper - box.lower) / 2).to(device, _DTYPE).flatten()
        self.d = self.mid.numel()
        self.limit = limit
        self.dropped: list[str] = []

    def input(self, shape: torch.Size) -> _Sym:
        eye = torch.eye(self.d, dtype=_DTYPE, device=self.device).reshape(self.d, *shape)
        zero = torch.zeros((1, *shape), dtype=_DTYPE, device=self.device)
        return _Sym(eye, zero, eye, zero.clone())

    def const(self, iv: Interval) -> _Sym:
        return _Sym(None, iv.lo, None, iv.hi)

    def _dot(self, a: Tensor, upper: bool) -> Tensor:
        shape = (self.d,) + (1,) * (a.dim() - 1)
        centre = (a * self.mid.view(shape)).sum(0, keepdim=True)
        spread = (a.abs() * self.rad.view(shape)).sum(0, keepdim=True)
        return centre + spread if upper else centre - spread

    def concretize(self, sym: _Sym) -> Interval:
        lo = sym.lc if sym.la is None else sym.lc + self._dot(sym.la, upper=False)
        hi = sym.uc if sym.ua is None else sym.uc + self._dot(sym.ua, upper=True)
        return Interval(lo, hi)

    def affine(
        self,
        sym: _Sym,
        f_pos: Callable[[Tensor], Tensor],
        f_neg: Callable[[Tensor], Tensor] | None,
        bias: Tensor | float | None = None,
    ) -> _Sym | None:
        """Bounds of ``g(value) + bias`` for a linear ``g = f_pos + f_neg`` where ``f_pos``
        has non-negative and ``f_neg`` non-positive coefficients."""
        la = _opt_add(_opt_apply(f_pos, sym.la), _opt_apply(f_neg, sym.ua))
        ua = _opt_add(_opt_apply(f_pos, sym.ua), _opt_apply(f_neg, sym.la))
        lc, uc = f_pos(sym.lc), f_pos(sym.uc)
        if f_neg is not None:
            lc, uc = lc + f_neg(sym.uc), uc + f_neg(sym.lc)
        if bias is not None:
            lc, uc = lc + bias, uc + bias
        out = _Sym(la, lc, ua, uc)
        return self.checked(out)

    def checked(self, sym: _Sym) -> _Sym | None:
        for a in (sym.la, sym.ua):
            if a is not None and a.numel() > self.limit:
                return None
        return sym


def _sym_neg(s: _Sym) -> _Sym:
    return _Sym(None if s.ua is None else -s.ua, -s.uc, None if s.la is None else -s.la, -s.lc)


def _sym_sum(a: _Sym, b: _Sym) -> _Sym:
    return _Sym(_opt_add(a.la, b.la), a.lc + b.lc, _opt_add(a.ua, b.ua), a.uc + b.uc)


def _scale_fns(
    c: Tensor,
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    pos, neg = c.clamp(min=0), c.clamp(max=0)
    return (lambda t: t * pos), (lambda t: t * neg)


def _index_map(op: Callable[[Tensor], Tensor], shape: torch.Size) -> Callable[[Tensor], Tensor]:
    """A pure data-movement op (view, permute, getitem ...) as a gather on flat indices."""
    idx = op(torch.arange(math.prod(shape), dtype=torch.int64).reshape(shape))
    out_shape, flat = tuple(idx.shape[1:]), idx.reshape(-1)

    def gather(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], -1)[:, flat].reshape(t.shape[0], *out_shape)

    return gather


def _piecewise_slope(
    f: Callable[[Tensor], Tensor], spec: ActivationSpec, like: Tensor
) -> Tensor | None:
    """The negative-side slope ``a`` (``(1, *S)``) when ``f(z) = max(z, a z)`` with
    0 <= a <= 1 elementwise (ReLU, leaky ReLU, PReLU, eval RReLU); else None."""
    if not spec.max_of_linear:
        return None
    one = torch.ones_like(like)
    a = -f(-one)
    if not (torch.equal(f(one.clone()), one) and torch.equal(f(2 * one), 2 * one)):
        return None
    if not torch.allclose(f(-2 * one), -2 * a, rtol=0, atol=1e-12):
        return None
    if bool((a < 0).any() or (a > 1).any()):
        return None
    return a


def _sym_activation(ctx: _SymCtx, sym: _Sym, z: Interval, a: Tensor) -> _Sym | None:
    """CROWN's linear relaxation of ``max(z, a z)`` (0 <= a <= 1) over ``[l, u]``
    (Zhang et al. 2018, "Efficient Neural Network Robustness Certification with General
    Activation Functions"): the chord above, ``lam z`` below with lam in {a, 1}."""
    lo, hi = z.lo, z.hi
    dead, alive = hi <= 0, lo >= 0
    cross = ~dead & ~alive
    one = torch.ones_like(lo)
    lam = torch.where(alive | (cross & (hi >= -lo)), one, a)
    width = torch.where(cross, hi - lo, one)
    chord = (hi - a * lo) / width
    slope = torch.where(cross, chord, torch.where(alive, one, a))
    shift = torch.where(cross, a * lo - chord * lo, torch.zeros_like(lo))
    la = None if sym.la is None else sym.la * lam
    ua = None if sym.ua is None else sym.ua * slope
    return ctx.checked(_Sym(la, sym.lc * lam, ua, sym.uc * slope + shift))


_POOL_LINEAR_MODULES: tuple[type[nn.Module], ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)  # fmt: skip
_POOL_LINEAR_FUNCTIONS: set[Any] = {
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
}  # fmt: skip
_MOVE_METHODS = {
    "view", "reshape", "flatten", "unsqueeze", "squeeze", "permute", "transpose",
    "contiguous", "expand", "__getitem__",
}  # fmt: skip
_MOVE_FUNCTIONS: set[Any] = {
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute,
    torch.transpose, operator.getitem,
}  # fmt: skip


def _symbolic(
    ctx: _SymCtx,
    gm: fx.GraphModule,
    node: fx.Node,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    syms: dict[str, _Sym],
    act_f: tuple[Callable[[Tensor], Tensor], ActivationSpec] | None,
) -> _Sym | None:
    """Symbolic bounds of ``node``'s output, or None (then its IBP interval is used)."""

    def sym_of(i: int) -> _Sym | None:
        a = node.args[i] if i < len(node.args) else None
        v = args[i] if i < len(args) else None
        if not _is_iv(v):
            return None
        if isinstance(a, fx.Node) and a.name in syms:
            return syms[a.name]
        assert isinstance(v, Interval)
        return ctx.const(v)

    x = sym_of(0)
    if x is None:
        return None
    target = node.target
    if act_f is not None:
        a = _piecewise_slope(act_f[0], act_f[1], args[0].lo)
        return None if a is None else _sym_activation(ctx, x, args[0], a)
    if node.op == "call_module":
        m = gm.get_submodule(str(target))
        if isinstance(m, nn.Linear):
            w = m.weight.detach().to(_DTYPE)
            wp, wn = w.clamp(min=0), w.clamp(max=0)
            b = None if m.bias is None else m.bias.detach().to(_DTYPE)
            return ctx.affine(x, lambda t: F.linear(t, wp), lambda t: F.linear(t, wn), b)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            w = m.weight.detach().to(_DTYPE)
            wp, wn = w.clamp(min=0), w.clamp(max=0)
            conv = m
            cb = None
            if m.bias is not None:
                cb = m.bias.detach().to(_DTYPE).view((1, -1) + (1,) * (args[0].lo.dim() - 2))
            return ctx.affine(
                x,
                lambda t: conv._conv_forward(t, wp, None),
                lambda t: conv._conv_forward(t, wn, None),
                cb,
            )
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            assert m.running_mean is not None
            scale = 1.0 / torch.sqrt(m.running_var.detach().to(_DTYPE) + m.eps)
            if m.weight is not None:
                scale = scale * m.weight.detach().to(_DTYPE)
            shift = -m.running_mean.detach().to(_DTYPE) * scale
            if m.bias is not None:
                shift = shift + m.bias.detach().to(_DTYPE)
            shape = (1, -1) + (1,) * (args[0].lo.dim() - 2)
            fp, fn = _scale_fns(scale.view(shape))
            return ctx.affine(x, fp, fn, shift.view(shape))
        if isinstance(m, _IDENTITY_MODULES):
            return x
        if isinstance(m, _POOL_LINEAR_MODULES):
            return ctx.affine(x, m, None)
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return ctx.affine(x, _index_map(m, args[0].lo.shape), None)
        return None
    if node.op == "call_method":
        name = str(target)
        if name in _MOVE_METHODS and not _any_iv(args[1:]):

            def op(t: Tensor) -> Tensor:
                return getattr(t, name)(*args[1:], **kwargs)

            return ctx.affine(x, _index_map(op, args[0].lo.shape), None)
        return None
    if target in _ARITHMETIC and (kwargs or len(args) != 2):
        return None
    if target in (operator.add, torch.add, operator.iadd, operator.sub, torch.sub, operator.isub):
        sign = -1.0 if target in (operator.sub, torch.sub, operator.isub) else 1.0
        y = sym_of(1)
        if y is None:
            if not _is_iv(args[0]):
                return None
            c = _const(args[1])
            return _Sym(x.la, x.lc + sign * c, x.ua, x.uc + sign * c)
        return _sym_sum(x, _sym_neg(y) if sign < 0 else y)
    if target in (operator.mul, torch.mul, operator.imul, operator.truediv, torch.div):
        if _is_iv(args[1]):
            return None
        c = torch.as_tensor(_const(args[1]), dtype=_DTYPE)
        if target in (operator.truediv, torch.div):
            c = 1.0 / c
        fp, fn = _scale_fns(c)
        return ctx.affine(x, fp, fn)
    if target in (operator.neg, torch.neg):
        return _sym_neg(x)
    if target in _IDENTITY_FUNCTIONS:
        return x
    if target in _POOL_LINEAR_FUNCTIONS:
        rest = args[1:]
        return ctx.affine(x, lambda t: target(t, *rest, **kwargs), None)  # type: ignore[operator]
    if target in _MOVE_FUNCTIONS and not _any_iv(args[1:]):
        rest = args[1:]

        def op2(t: Tensor) -> Tensor:
            return target(t, *rest, **kwargs)  # type: ignore[operator]

        return ctx.affine(x, _index_map(op2, args[0].lo.shape), None)
    return None


def certify(
    model: nn.Module,
    box: Box,
    *,
    method: str = "symbolic",
    atol: float = 1e-5,
    unit_dim: int | None = None,
    max_coefficients: int = 2**24,
) -> Certificate:
    """Certify dead units of ``model`` over the input ``box`` (C1's "for any input value").

    Args:
        model: a traceable module taking one input tensor ``(N, *S)``; its parameters are
            read, never changed. It is analysed as in eval mode, in float64 on the
            device of its parameters (CPU or CUDA; not MPS, which has no float64).
        box: the input domain; ``box.shape`` is ``S``, one sample's shape.
        method: ``"symbolic"`` (default: symbolic linear bounds intersected with IBP,
            never looser than IBP) or ``"ibp"`` (interval bound propagation only).
        atol: a unit is certified only when its upper bound on z is below ``-atol``.
        unit_dim: the unit axis at every site; default: the rule of :mod:`deadrelu.capture`.
        max_coefficients: with ``"symbolic"``, the largest coefficient tensor
            ``(D, *S)`` (D input features, S a layer's shape) kept; a layer beyond it
            continues with IBP from there (noted in ``Certificate.notes``).

    Returns:
        A :class:`Certificate`; ``cert.dead_units("net.1")`` lists the units proved to have
        z < 0 for every input in the box.

    Raises:
        ValueError: the model cannot be traced, or uses an operation IBP does not support
            (the message names it).
    """
    if method not in METHODS:
        raise ValueError(
            f"unknown certification method {method!r}; available: {', '.join(METHODS)}"
        )
    if atol < 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    if not isinstance(box, Box):
        raise TypeError(f"certify needs a Box, got {type(box).__name__}: Box.from_data(x)")
    _check_box(model, box)
    gm = trace(model)
    sites = site_names(gm)
    producer: int | None = None
    cert = Certificate(box=box, method=method, atol=atol)
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    ctx = _SymCtx(box, max_coefficients, device) if method == "symbolic" else None
    syms: dict[str, _Sym] = {}
    env: dict[str, Any] = {}
    placeholders = 0

    def load(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: env[n.name])

    with torch.no_grad():
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                placeholders += 1
                if placeholders > 1:
                    if node.args:  # has a default: leave it
                        env[node.name] = node.args[0]
                        continue
                    raise ValueError(
                        "certify: the model takes more than one input; certify supports "
                        "models of one tensor input"
                    )
                lo = box.lower.to(device, _DTYPE).unsqueeze(0)
                hi = box.upper.to(device, _DTYPE).unsqueeze(0)
                env[node.name] = Interval(lo, hi)
                if ctx is not None:
                    syms[node.name] = ctx.input(box.shape)
                continue
            if node.op == "output":
                break
            args, kwargs = load(node.args), load(node.kwargs)
            if node.op == "get_attr":
                obj: Any = gm
                for part in str(node.target).split("."):
                    obj = getattr(obj, part)
                env[node.name] = obj
                continue
            if not _any_iv(args) and not _any_iv(kwargs.values()):
                # a constant computation (shapes, ...): run it as is
                if node.op == "call_module":
                    env[node.name] = gm.get_submodule(node.target)(*args, **kwargs)
                elif node.op == "call_method":
                    env[node.name] = getattr(args[0], node.target)(*args[1:], **kwargs)
                else:
                    env[node.name] = node.target(*args, **kwargs)
                continue
            site = sites.get(node)
            act_f = None
            try:
                if site is not None:
                    out = _site(cert, gm, node, site, args, kwargs, atol, unit_dim, producer)
                    if ctx is not None:
                        act_f = (_act_fn(gm, node, site[1], args, kwargs)[0], site[1])
                else:
                    out = _op_bounds(gm, node, args, kwargs)
                    producer = _producer_kind(gm, node, producer)
            except ValueError as exc:
                msg = str(exc).removeprefix("certify: ")
                raise ValueError(f"certify: in {_where(node)}: {msg}") from None
            if ctx is not None and isinstance(out, Interval):
                sym = None
                if ctx.d * out.lo.numel() <= ctx.limit:  # else: IBP from here
                    sym = _symbolic(ctx, gm, node, args, kwargs, syms, act_f)
                if (
                    sym is None
                    and _any_iv(args)
                    and node.args
                    and isinstance(node.args[0], fx.Node)
                    and node.args[0].name in syms
                ):
                    what = node.target if node.op == "call_module" else node.name
                    cert.notes.append(
                        f"{what}: no symbolic bounds (unsupported there, or more than "
                        f"max_coefficients = {ctx.limit} coefficients); IBP from there"
                    )
                if sym is not None:
                    tight = ctx.concretize(sym)
                    out = Interval(torch.maximum(out.lo, tight.lo), torch.minimum(out.hi, tight.hi))
                    syms[node.name] = sym
            env[node.name] = out
    return cert


def _where(node: fx.Node) -> str:
    """Where ``node`` runs, by module path: the module it calls, or whose forward calls it."""
    if node.op == "call_module":
        return f"module {str(node.target)!r}"
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack)) if stack else ""
    return f"the forward of module {path!r}" if path else "the model's own forward"


def _check_box(model: nn.Module, box: Box) -> None:
    """Raise ``ValueError`` naming both shapes when the model does not take the box's:
    one forward of two box samples, in eval mode (modes restored)."""
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(box.sample(2).to(device=device, dtype=dtype))
    except RuntimeError as exc:
        shape = tuple(box.shape)
        first = next(
            (
                (p, m)
                for p, m in model.named_modules()
                if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
            ),
            None,
        )
        want = ""
        if first is not None and isinstance(first[1], nn.Linear):
            want = f": its first layer {first[0]!r} (Linear) takes (N, ..., {first[1].in_features})"
        elif first is not None:
            conv = first[1]
            assert isinstance(conv, nn.modules.conv._ConvNd)
            dims = ", ".join(["*"] * (conv.weight.dim() - 2))
            want = (
                f": its first layer {first[0]!r} ({type(conv).__name__}) takes "
                f"(N, {conv.in_channels}, {dims})"
            )
        raise ValueError(
            f"certify: the box has shape {shape} (one sample, no batch dim) but the model "
            f"does not take inputs of shape (N, {', '.join(map(str, shape))}){want}; build "
            f"the box from one input's shape ({str(exc).splitlines()[0]})"
        ) from None
    finally:
        for m, mode in modes.items():
            m.training = mode


def _act_fn(
    gm: fx.GraphModule,
    node: fx.Node,
    spec: ActivationSpec,
    args: Sequence[Any],
    kwargs: dict[str, Any],
) -> tuple[Callable[[Tensor], Tensor], Activation | None]:
    """The elementwise function an activation node applies (float64), and its params."""
    f: Callable[[Tensor], Tensor]
    if node.op == "call_module":
        module = copy.deepcopy(gm.get_submodule(str(node.target))).to(_DTYPE).eval()
        return module, get(module)
    if node.op == "call_function":
        act = _bound_activation_params(spec, args[1:], kwargs)
        target = node.target
        assert callable(target)
        rest, kw = args[1:], kwargs

        def f(t: Tensor) -> Tensor:
            return target(t, *rest, **kw)

        return f, act
    method, rest, kw = str(node.target), args[1:], kwargs

    def g(t: Tensor) -> Tensor:
        return getattr(t, method)(*rest, **kw)

    return g, spec.bind()


def _site(
    cert: Certificate,
    gm: fx.GraphModule,
    node: fx.Node,
    site: tuple[str, ActivationSpec],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    atol: float,
    unit_dim: int | None,
    producer: int | None,
) -> Interval:
    name, spec = site
    z = args[0]
    if not _is_iv(z):
        raise _unsupported(f"activation {name!r} applied to a non-interval argument")
    f, act = _act_fn(gm, node, spec, args, kwargs)
    dim = unit_dim if unit_dim is not None else default_unit_dim(z.hi.dim(), producer)
    upper, lower = _per_unit(z.hi, "max", dim).cpu(), _per_unit(z.lo, "min", dim).cpu()
    cert.sites[name] = SiteBounds(
        site=name,
        activation=str(act) if act is not None else spec.name,
        lower=lower,
        upper=upper,
        certified_dead=upper < -atol,
        unit_dim=dim,
    )
    return _activation_bounds(f, act, z)


def _op_bounds(
    gm: fx.GraphModule, node: fx.Node, args: Sequence[Any], kwargs: dict[str, Any]
) -> Any:
    target = node.target
    if node.op == "call_module":
        assert isinstance(target, str)
        x = args[0]
        if not _is_iv(x) or len(args) > 1:
            raise _unsupported(f"layer {target!r} called with several inputs")
        return _module_bounds(gm.get_submodule(target), target, x)
    if node.op == "call_method":
        name = str(target)
        x = args[0]
        if name == "size" or name == "dim":
            return getattr(x.lo, name)(*args[1:], **kwargs)
        if name in _SHAPE_METHODS or name in _MONOTONE_METHODS:
            if _any_iv(args[1:]):
                raise _unsupported(f"method .{name}() with an interval argument")
            return x.map(lambda t: getattr(t, name)(*args[1:], **kwargs))
        if name in ("add", "sub", "mul", "div") and (kwargs or len(args) != 2):
            raise _unsupported(f"method .{name}() with extra arguments (alpha, rounding_mode)")
        if name in ("add", "sub"):
            return _add(x, args[1], 1.0 if name == "add" else -1.0)
        if name in ("mul", "div") and not _is_iv(args[1]):
            c = args[1] if name == "mul" else 1.0 / _const(args[1])
            return _mul(x, c)
        raise _unsupported(f"tensor method .{name}()")
    # call_function
    if target in _ARITHMETIC and (kwargs or len(args) != 2):
        raise _unsupported(
            f"{getattr(target, '__name__', target)}() with extra arguments (alpha, "
            "rounding_mode, out)"
        )
    if target in (operator.add, torch.add, operator.iadd):
        return _add(args[0], args[1])
    if target in (operator.sub, torch.sub, operator.isub):
        return _add(args[0], args[1], -1.0)
    if target in (operator.mul, torch.mul, operator.imul):
        return _mul(args[0], args[1])
    if target in (operator.truediv, torch.div) and not _is_iv(args[1]):
        return _mul(args[0], 1.0 / _const(args[1]))
    if target in (operator.neg, torch.neg):
        return Interval(-args[0].hi, -args[0].lo)
    if target in _IDENTITY_FUNCTIONS:
        return args[0]
    if target is getattr and _is_iv(args[0]):
        return getattr(args[0].lo, args[1])
    if target in _SHAPE_FUNCTIONS:
        x = args[0]
        if not _is_iv(x) or _any_iv(args[1:]) or _any_iv(kwargs.values()):
            raise _unsupported(f"function {getattr(target, '__name__', target)} on intervals")
        if kwargs.get("return_indices"):
            raise _unsupported("pooling with return_indices=True")
        return x.map(lambda t: target(t, *args[1:], **kwargs))  # type: ignore[operator]
    if target in (torch.cat, torch.concat, torch.stack):
        parts = args[0]
        los = [p.lo if _is_iv(p) else _const(p) for p in parts]
        his = [p.hi if _is_iv(p) else _const(p) for p in parts]
        return Interval(target(los, *args[1:], **kwargs), target(his, *args[1:], **kwargs))
    if target is F.linear:
        w = args[1] if len(args) > 1 else kwargs["weight"]
        b = args[2] if len(args) > 2 else kwargs.get("bias")
        if _is_iv(w) or _is_iv(b):
            raise _unsupported("F.linear with interval weights")
        return _linear(args[0], w, b)
    raise _unsupported(f"function {getattr(target, '__name__', target)!r}")
