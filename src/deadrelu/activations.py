"""The ReLU family: forward, analytic derivative, ``nn.Module`` and metadata, in one registry.

Every activation is an :class:`ActivationSpec` registered by name. A spec knows

* ``forward(z, **params)``: the function, through torch's fused kernel where torch has one;
* ``derivative(z, **params)``: f'(z) as its own closed-form formula (never autograd), with
  PyTorch's convention at the kinks (ReLU'(0) = 0, LeakyReLU'(0) = slope, ELU'(0) = alpha)
  and at NaN (the value autograd returns);
* ``module``: the ``nn.Module`` class, built from the same parameters;
* metadata the diagnosis needs: where the gradient is exactly zero, whether it saturates
  as z -> -inf, and which torch modules and functions it covers.

:func:`get` resolves a string (``"leaky_relu"``, ``"leaky_relu(0.2)"``,
``"elu(alpha=0.3)"``), a module class, a module instance, a spec or a bound activation to a
:class:`Activation` (a spec plus validated parameter values). Nothing else in the project
branches on activation names: it asks the registry.

All tensors are elementwise: ``z`` has any shape ``(*)`` and results have the same shape.

Conventions of ``derivative`` (checked against autograd in ``tests/test_activations.py``):

* **finite z**: equal to autograd in float64 (to rounding; CELU's backward kernel rounds
  ``1/alpha`` to float32, so autograd is off by ~1e-7 relative there; ours is exact).
* **kinks**: PyTorch's convention. ReLU'(0) = 0, LeakyReLU'(0) = slope, PReLU'(0) = a,
  ELU'(0) = alpha, SELU'(0) = lambda * alpha, CELU'(0) = 1, ReLU6'(0) = ReLU6'(6) = 0,
  Hardswish'(-3) = 0 and Hardswish'(3) = 1, Hardsigmoid' and Hardtanh' 0 at their limits,
  ReLU²'(0) = 0, Softplus: sigmoid(beta z) up to ``beta z <= threshold``, 1 above.
* **z = +-inf**: the limit of f'(z). Autograd agrees except where its formula evaluates
  ``inf * 0`` (GELU, SiLU, Mish at +-inf; tanh-GELU once ``z**3`` overflows): there it
  returns NaN and we return the limit (1 at +inf, 0 at -inf).
* **z = NaN**: where PyTorch's backward picks a branch by a comparison that is the same in
  every kernel (ReLU, Leaky ReLU, PReLU, RReLU: ``z > 0`` is False; Hardsigmoid:
  ``-3 < z < 3`` is False), we return that branch (ReLU: 1, Hardsigmoid: 0, the others:
  their negative slope), as autograd does. Elsewhere we return NaN: the smooth functions
  and ReLU² give NaN in autograd too, and for ELU, SELU, CELU, ReLU6, Hardtanh and
  Hardswish autograd's value at NaN depends on whether the element went through the
  vectorised or the scalar kernel (position in the tensor, dtype), so there is no
  convention to match.

Forward passes are torch's own kernels, so they inherit torch's values at the edges
(e.g. GELU, SiLU, Mish, Hardswish and QuickGELU give NaN at z = -inf).
"""

from __future__ import annotations

import ast
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SELU_ALPHA",
    "SELU_LAMBDA",
    "Activation",
    "ActivationSpec",
    "ParamSpec",
    "get",
    "make_module",
    "names",
    "register",
    "register_module",
    "spec_for_function",
    "spec_for_module",
]

#: SELU constants (Klambauer et al. 2017), to the precision of the paper's derivation.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_LAMBDA = 1.0507009873554804934193349852946

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of an activation: default value and the valid range.

    ``minimum``/``maximum`` are inclusive bounds unless ``exclusive_min`` is set. ``kind`` is
    ``float``, ``int``, ``bool`` or ``str`` (``choices`` then lists the valid strings).
    """

    name: str
    default: Any
    kind: type = float
    minimum: float | None = None
    maximum: float | None = None
    exclusive_min: bool = False
    choices: tuple[str, ...] = ()
    doc: str = ""

    def validate(self, value: Any, activation: str) -> Any:
        """Return ``value`` converted to ``kind``; raise ``ValueError`` when invalid."""
        where = f"{activation}: parameter {self.name!r}"
        if self.kind is str:
            if value not in self.choices:
                raise ValueError(f"{where} must be one of {list(self.choices)}, got {value!r}")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be True or False, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{where} must be a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{where} must be finite, got {value!r}")
        if self.kind is int:
            if number != int(number):
                raise ValueError(f"{where} must be an integer, got {value!r}")
            value = int(number)
        else:
            value = number
        if self.minimum is not None:
            bad = value <= self.minimum if self.exclusive_min else value < self.minimum
            if bad:
                op = ">" if self.exclusive_min else ">="
                raise ValueError(f"{where} must be {op} {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{where} must be <= {self.maximum}, got {value!r}")
        return value


@dataclass(frozen=True)
class ActivationSpec:
    """Everything deadrelu knows about one activation function.

    Attributes:
        name: registry name, e.g. ``"leaky_relu"``.
        formula: f(z) in plain text.
        derivative_formula: f'(z) in plain text, including the convention at z = 0.
        params: the parameters, in positional order.
        forward: ``forward(z, **params) -> Tensor``, same shape as ``z``.
        derivative: ``derivative(z, **params) -> Tensor``, the analytic f'(z).
        module: ``nn.Module`` class; ``module(**params)`` builds it.
        zero_grad_region: where f'(z) is exactly 0, in words (``"z <= 0"``), or ``"none"``.
        zero_grad: ``zero_grad(z, **params) -> BoolTensor``, the mask of that region.
        saturates: a unit can be stuck where |f'| is (nearly) 0 without being dead, so the
            ``saturated`` class applies: f'(z) -> 0 as z -> -inf without being exactly 0
            (ELU, SELU, CELU, GELU, SiLU, Mish, Softplus), or f is clipped to a non-zero
            constant (Hardtanh beyond its limits, Hardsigmoid above 3). ReLU, ReLU², Hardswish
            do not saturate: below their kink they *die* (see ``dead_below``). ReLU6 is
            kept False (its clip at 6 is not flagged).
        dead_below: ``dead_below(**params) -> float | None``: f(z) = 0 and f'(z) = 0 for
            every z <= this value (ReLU, ReLU6, ReLU²: 0; Hardswish, Hardsigmoid: -3), so a
            unit whose pre-activations all lie there outputs 0 and passes no gradient: dead
            in the strict sense. None: no such region (leaky slopes, ELU, GELU, Hardtanh
            with min_val != 0 ...). The ``dead`` class of the reports (never z > 0) is this
            test for a kink at 0; for Hardswish/Hardsigmoid a unit never above 0 may still
            pass gradient between -3 and 0. Read it through :attr:`Activation.dead_below`.
        torch_modules: torch module classes this spec covers (``nn.ReLU``).
        torch_functions: torch callables this spec covers (``F.relu``, ``torch.relu``, ...).
        tensor_methods: ``Tensor`` method names it covers (``"relu"``, ``"relu_"``).
        learnable: the module has trainable parameters (PReLU).
        max_of_linear: f(z) = max(z, a z) with 0 <= a <= 1 (ReLU, leaky, PReLU, eval
            RReLU): linear on each side of a kink at 0, the form bound propagation relaxes.
        nonnegative: f(z) >= 0 for every z (ReLU, ReLU6, Softplus), so |f(z)| = f(z).
        description: one line for tables.
        check: optional ``check(params)`` run by :meth:`bind` after each parameter is
            validated, for constraints between parameters (RReLU: lower <= upper); raises
            ``ValueError``.
    """

    name: str
    formula: str
    derivative_formula: str
    params: tuple[ParamSpec, ...]
    forward: Callable[..., Tensor]
    derivative: Callable[..., Tensor]
    module: type[nn.Module]
    zero_grad_region: str
    zero_grad: Callable[..., Tensor]
    saturates: bool
    dead_below: Callable[..., float | None] = field(default=lambda **_: None)
    torch_modules: tuple[type[nn.Module], ...] = ()
    torch_functions: tuple[Callable[..., Any], ...] = ()
    tensor_methods: tuple[str, ...] = ()
    learnable: bool = False
    max_of_linear: bool = False
    nonnegative: bool = False
    description: str = ""
    check: Callable[[Mapping[str, Any]], None] | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """Default parameter values by name."""
        return {p.name: p.default for p in self.params}

    def bind(self, *args: Any, **kwargs: Any) -> Activation:
        """Validate parameters (positional in ``params`` order, or by name) and bind them."""
        if len(args) > len(self.params):
            raise ValueError(
                f"{self.name} takes at most {len(self.params)} parameter(s) "
                f"({self._param_names()}), got {len(args)}"
            )
        values = self.defaults
        for p, v in zip(self.params, args, strict=False):
            values[p.name] = v
        positional = {p.name for p in self.params[: len(args)]}
        for k, v in kwargs.items():
            if k not in values:
                raise ValueError(
                    f"{self.name} has no parameter {k!r}; valid: {self._param_names()}"
                )
            if k in positional:
                raise ValueError(
                    f"{self.name}: parameter {k!r} given twice (by position and by name)"
                )
            values[k] = v
        by_name = {p.name: p for p in self.params}
        checked = {k: by_name[k].validate(v, self.name) for k, v in values.items()}
        if self.check is not None:
            self.check(checked)
        return Activation(self, checked)

    def _param_names(self) -> str:
        return ", ".join(p.name for p in self.params) or "none"


@dataclass(frozen=True)
class Activation:
    """A spec with concrete parameter values: callable like the function itself.

    ``act(z)`` is ``spec.forward(z, **params)``; ``act.derivative(z)`` the analytic f'(z).
    """

    spec: ActivationSpec
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The registry name."""
        return self.spec.name

    def __call__(self, z: Tensor) -> Tensor:
        return self.spec.forward(z, **self.params)

    def derivative(self, z: Tensor) -> Tensor:
        """f'(z), same shape as ``z``."""
        return self.spec.derivative(z, **self.params)

    def zero_grad(self, z: Tensor) -> Tensor:
        """Bool mask, same shape as ``z``: True where f'(z) is exactly 0."""
        return self.spec.zero_grad(z, **self.params)

    def module(self) -> nn.Module:
        """A fresh ``nn.Module`` with these parameters."""
        return self.spec.module(**self.params)

    @property
    def dead_below(self) -> float | None:
        """f = 0 and f' = 0 for every z <= this value, or None (see
        :attr:`ActivationSpec.dead_below`)."""
        return self.spec.dead_below(**self.params)

    def __str__(self) -> str:
        changed = {k: v for k, v in self.params.items() if v != self.spec.defaults[k]}
        if not changed:
            return self.spec.name
        args = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"{self.spec.name}({args})"


_REGISTRY: dict[str, ActivationSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: ActivationSpec, aliases: tuple[str, ...] = ()) -> ActivationSpec:
    """Add ``spec`` to the registry under its name and ``aliases``; return it."""
    if spec.name in _REGISTRY:
        raise ValueError(f"activation {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    _BY_CLASS.clear()
    for a in aliases:
        _ALIASES[a] = spec.name
    return spec


def names() -> list[str]:
    """Registered activation names, in registration order."""
    return list(_REGISTRY)


def _lookup(name: str) -> ActivationSpec:
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(names())}")
    return _REGISTRY[key]


#: Names that stand for an activation with parameters (Hugging Face's ``ACT2FN`` names).
_PRESETS: dict[str, str] = {
    "gelu_tanh": "gelu(approximate=tanh)",
    "gelu_new": "gelu(approximate=tanh)",
    "gelu_fast": "gelu(approximate=tanh)",
    "gelu_pytorch_tanh": "gelu(approximate=tanh)",
}

_FORM = (
    "expected 'name', 'name(value, ...)' or 'name(param=value, ...)', "
    "e.g. 'leaky_relu(0.2)' or 'elu(alpha=0.3)'"
)


def _parse(text: str) -> Activation:
    """Parse ``"name"``, ``"name(0.2)"`` or ``"name(alpha=0.3)"``."""
    original, text = text, text.strip()
    if "(" not in text:
        key = text.lower().replace("-", "_")
        if key in _PRESETS:
            return _parse(_PRESETS[key])
        return _lookup(text).bind()
    if not text.endswith(")"):
        raise ValueError(f"cannot parse activation {original!r}: {_FORM}")
    head, _, rest = text.partition("(")
    spec = _lookup(head)
    try:
        call = ast.parse(f"f({rest}", mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"cannot parse activation {original!r} ({exc.msg}): {_FORM}") from exc
    if (
        not isinstance(call, ast.Call)
        or not isinstance(call.func, ast.Name)  # 'leaky_relu(0.2)(0.3)'
        or any(kw.arg is None for kw in call.keywords)  # 'elu(**d)'
        or any(isinstance(a, ast.Starred) for a in call.args)  # 'elu(*d)'
        or len({kw.arg for kw in call.keywords}) < len(call.keywords)  # 'elu(alpha=1, alpha=2)'
    ):
        raise ValueError(f"cannot parse activation {original!r}: {_FORM}")
    try:
        args = [_literal(a) for a in call.args]
        kwargs = {str(kw.arg): _literal(kw.value) for kw in call.keywords}
    except ValueError as exc:
        raise ValueError(
            f"activation parameters in {text!r} must be numbers or words "
            f"(e.g. 'gelu(approximate=tanh)'), got {exc}"
        ) from exc
    return spec.bind(*args, **kwargs)


def _literal(node: ast.expr) -> Any:
    """A parameter literal; a bare word (``tanh``) is read as the string ``"tanh"``."""
    if isinstance(node, ast.Name):
        return float(node.id) if node.id in ("inf", "nan") else node.id
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(ast.unparse(node)) from exc


#: Activation classes outside torch, matched by (``__module__``, ``__qualname__``) so that
#: their packages are never imported here: Hugging Face ``transformers.activations`` (the
#: classes behind ``ACT2FN``) and timm's own modules. Value: what :func:`get` parses.
_NAMED_CLASSES: dict[tuple[str, str], str] = {
    **{
        ("transformers.activations", name): like
        for name, like in [
            ("GELUActivation", "gelu"),
            ("NewGELUActivation", "gelu(approximate=tanh)"),  # GPT-2's gelu_new
            ("FastGELUActivation", "gelu(approximate=tanh)"),
            ("AccurateGELUActivation", "gelu(approximate=tanh)"),
            ("GELUTanh", "gelu(approximate=tanh)"),
            ("PytorchGELUTanh", "gelu(approximate=tanh)"),
            ("QuickGELUActivation", "quick_gelu"),
            ("ReLUSquaredActivation", "relu_squared"),
            ("SiLUActivation", "silu"),
            ("MishActivation", "mish"),
        ]
    },
    **{
        (module, name): like
        for module in ("timm.layers.activations", "timm.layers.activations_me")
        for name, like in [
            ("GELU", "gelu"),
            ("GELUTanh", "gelu(approximate=tanh)"),
            ("QuickGELU", "quick_gelu"),
            ("Swish", "silu"),
            ("SwishMe", "silu"),
            ("Mish", "mish"),
            ("MishMe", "mish"),
            ("HardSwish", "hardswish"),
            ("HardSwishMe", "hardswish"),
            ("HardSigmoid", "hardsigmoid"),
            ("HardSigmoidMe", "hardsigmoid"),
        ]
    },
}

#: The registry's module classes -> spec (:func:`_module_entry`; emptied by :func:`register`).
_BY_CLASS: dict[type, ActivationSpec] = {}

#: A user's classes (:func:`register_module`): class -> what they compute.
_USER_MODULES: dict[type[nn.Module], Activation | Callable[[nn.Module], Activation]] = {}


def _module_entry(
    cls: type,
) -> ActivationSpec | Activation | Callable[[nn.Module], Activation] | None:
    """What covers ``cls``: the entry of the most specific class in its MRO that is
    registered (a user's class, a named class, a spec's module or torch module), or None.

    A spec is returned when the parameters are read from the instance; an
    :class:`Activation` (or a function of the instance) when they are fixed by the entry.
    """
    by_class = _BY_CLASS
    if not by_class:  # built once per registry state (attach looks up every module)
        for spec in _REGISTRY.values():
            for c in (spec.module, *spec.torch_modules):
                by_class.setdefault(c, spec)
    for k in cls.__mro__:
        if k in _USER_MODULES:
            return _USER_MODULES[k]
        named = _NAMED_CLASSES.get((k.__module__, k.__qualname__))
        if named is not None:
            return _parse(named)
        if k in by_class:
            return by_class[k]
    return None


def spec_for_module(module: nn.Module | type[nn.Module]) -> ActivationSpec | None:
    """The spec covering a module (instance or class), or None if it is not an activation.

    The most specific registered class wins: ``nn.ReLU6`` (a subclass of ``nn.Hardtanh``) is
    relu6, not hardtanh. Besides torch's and deadrelu's modules, Hugging Face's and timm's
    activation classes (``NewGELUActivation``, ``QuickGELUActivation``, timm's
    ``HardSwish`` ...) are covered by class name, without importing those packages, and any
    class given to :func:`register_module`.
    """
    cls = module if isinstance(module, type) else type(module)
    entry = _module_entry(cls)
    if entry is None or isinstance(entry, ActivationSpec):
        return entry
    if isinstance(entry, Activation):
        return entry.spec
    if isinstance(module, type):  # registered with a function of the instance: needs one
        return None
    return entry(module).spec


def register_module(
    cls: type[nn.Module],
    like: str | ActivationSpec | Activation | Callable[[nn.Module], Activation | str],
) -> None:
    """Declare that instances of ``cls`` (and its subclasses) compute the activation ``like``.

    After ``register_module(MyAct, like="gelu(approximate=tanh)")`` every ``MyAct`` in a
    model is a call site of :func:`deadrelu.scan`, the Monitor and the remedies, like
    ``nn.GELU(approximate="tanh")``: its input is the pre-activation ``z``, its output the
    activation. ``like`` is anything :func:`get` accepts as a name (``"leaky_relu(0.2)"``,
    ``"gelu_tanh"``, a spec, an :class:`Activation`), or a function of the module instance
    returning one, for classes whose parameters differ per instance
    (``lambda m: f"leaky_relu({m.slope})"``; :func:`spec_for_module` then needs an instance,
    not the class). Registering a class again replaces its entry.

    Raises:
        TypeError: ``cls`` is not an ``nn.Module`` subclass.
        ValueError: ``like`` names no registered activation.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_module needs an nn.Module subclass, got {cls!r}")
    if callable(like) and not isinstance(like, (ActivationSpec, Activation)):
        fn = like

        def read(module: nn.Module) -> Activation:
            act = get(fn(module))
            if act is None:
                raise ValueError(f"register_module({cls.__name__}): like(module) returned None")
            return act

        _USER_MODULES[cls] = read
        return
    act = get(like)
    if act is None:
        raise ValueError(f"register_module({cls.__name__}, like=None): name an activation")
    _USER_MODULES[cls] = act


def _module_params(spec: ActivationSpec, module: nn.Module) -> Activation:
    """Read the parameters of an activation module instance (ours or torch's)."""
    read = getattr(module, "activation_params", None)
    if callable(read):
        return spec.bind(**read())
    kwargs: dict[str, Any] = {}
    for p in spec.params:
        attr = _TORCH_ATTR.get((spec.name, p.name), p.name)
        if hasattr(module, attr):
            value = getattr(module, attr)
            if isinstance(value, Tensor):
                continue
            kwargs[p.name] = value
    return spec.bind(**kwargs)


#: torch module attribute names that differ from our parameter names.
_TORCH_ATTR: dict[tuple[str, str], str] = {
    ("leaky_relu", "slope"): "negative_slope",
    ("gelu", "approximate"): "approximate",
}


def spec_for_function(fn: Callable[..., Any]) -> ActivationSpec | None:
    """The spec covering a torch callable (``F.relu``, ``torch.relu_`` ...), or None."""
    for spec in _REGISTRY.values():
        if any(fn is f for f in spec.torch_functions):
            return spec
    return None


def get(
    activation: str | type[nn.Module] | nn.Module | ActivationSpec | Activation | None,
) -> Activation | None:
    """Resolve any way of naming an activation to a bound :class:`Activation`.

    Accepts a registry string with optional parameters (``"elu(alpha=0.3)"``), an
    ``nn.Module`` class (ours or torch's; default parameters), a module instance (its
    parameters are read), a spec (defaults), an :class:`Activation` (returned as is) or
    ``None`` (returns ``None``). Anything else, or an unknown name, raises ``ValueError``.
    """
    if activation is None or isinstance(activation, Activation):
        return activation
    if isinstance(activation, ActivationSpec):
        return activation.bind()
    if isinstance(activation, str):
        return _parse(activation)
    if isinstance(activation, nn.Module):
        entry = _module_entry(type(activation))
        if entry is None:
            raise ValueError(_unknown_module(type(activation)))
        if isinstance(entry, ActivationSpec):
            return _module_params(entry, activation)
        return entry if isinstance(entry, Activation) else entry(activation)
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        entry = _module_entry(activation)
        if entry is None:
            raise ValueError(_unknown_module(activation))
        if isinstance(entry, ActivationSpec):
            return entry.bind()
        if isinstance(entry, Activation):
            return entry
        raise ValueError(
            f"{activation.__name__} was registered with a function of the instance: "
            f"pass an instance to get() to read its parameters"
        )
    raise ValueError(
        f"cannot interpret {activation!r} as an activation: pass a name such as "
        f"'leaky_relu(0.2)', an nn.Module class or instance, or None"
    )


def _unknown_module(cls: type) -> str:
    return (
        f"{cls.__name__} is not an activation deadrelu knows; known: {', '.join(names())}. "
        f"If it computes one of these, declare it: "
        f"deadrelu.register_module({cls.__name__}, like='gelu_tanh')"
    )


def make_module(activation: str | type[nn.Module] | nn.Module | Activation) -> nn.Module:
    """A new ``nn.Module`` for ``activation`` (anything :func:`get` accepts but None)."""
    act = get(activation)
    if act is None:
        raise ValueError("make_module needs an activation, got None")
    return act.module()


# --------------------------------------------------------------------------------------
# Modules. Each forward calls torch's own kernel, so it costs what torch costs.
# ``activation_params`` lets the registry read the parameters back.
# --------------------------------------------------------------------------------------


class ReLU(nn.ReLU):
    """ReLU(z) = max(0, z). Same as ``nn.ReLU``; ``inplace`` is supported."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=inplace)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {}


class LeakyReLU(nn.LeakyReLU):
    """LeakyReLU(z) = z if z > 0 else slope * z (default slope 0.01)."""

    def __init__(self, slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__(negative_slope=slope, inplace=inplace)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {"slope": float(self.negative_slope)}


class PReLU(nn.Module):
    """Parametric ReLU: z if z > 0 else a * z, with ``a`` learned.

    Args:
        num_parameters: 1 (one slope shared by all channels) or the number of channels C;
            inputs are ``(N, C, *)`` and slope ``c`` applies to channel ``c`` (dim 1). As in
            torch, an input with fewer than 2 dims has one channel.
        init: initial slope (He et al. 2015 use 0.25).
        device, dtype: where and in which precision the slope lives (as in ``nn.PReLU``).
    """

    def __init__(
        self,
        num_parameters: int = 1,
        init: float = 0.25,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_parameters < 1:
            raise ValueError(f"prelu: num_parameters must be >= 1, got {num_parameters}")
        if not math.isfinite(init):
            raise ValueError(f"prelu: init must be finite, got {init}")
        self.num_parameters = num_parameters
        self.init = init
        self.weight = nn.Parameter(
            torch.full((num_parameters,), float(init), device=device, dtype=dtype)
        )

    def forward(self, z: Tensor) -> Tensor:
        """``z``: ``(N, C, *)`` or ``(N, C)`` (any shape when shared); returns the same shape."""
        if self.num_parameters > 1:
            channels = z.shape[1] if z.dim() >= 2 else 1
            if channels != self.num_parameters:
                raise ValueError(
                    f"prelu has {self.num_parameters} slopes but the input has {channels} "
                    f"channels in dim 1 (shape {tuple(z.shape)}); use num_parameters=1 for "
                    f"one shared slope or num_parameters={channels}"
                )
        return F.prelu(z, self.weight)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module (the *initial* slope, not the learned one)."""
        return {"num_parameters": self.num_parameters, "init": float(self.init)}

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}, init={self.init}"


class RReLU(nn.RReLU):
    """Randomized leaky ReLU: slope ~ U(lower, upper) in training, (lower+upper)/2 in eval."""

    def __init__(self, lower: float = 1.0 / 8, upper: float = 1.0 / 3) -> None:
        if upper < lower:
            raise ValueError(f"rrelu: upper ({upper}) must be >= lower ({lower})")
        super().__init__(lower=lower, upper=upper)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {"lower": float(self.lower), "upper": float(self.upper)}


class ELU(nn.ELU):
    """ELU(z) = z if z > 0 else alpha * (exp(z) - 1) (default alpha 1.0)."""

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__(alpha=alpha, inplace=inplace)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {"alpha": float(self.alpha)}


class SELU(nn.SELU):
    """SELU(z) = lambda * (z if z > 0 else alpha * (exp(z) - 1)), fixed constants."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=inplace)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {}


class CELU(nn.CELU):
    """CELU(z) = z if z > 0 else alpha * (exp(z / alpha) - 1)."""

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__(alpha=alpha, inplace=inplace)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {"alpha": float(self.alpha)}


class GELU(nn.GELU):
    """GELU(z) = z * Phi(z) (``approximate="none"``) or its tanh approximation."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__(approximate=approximate)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {"approximate": self.approximate}


class SiLU(nn.SiLU):
    """SiLU(z) = z * sigmoid(z) (a.k.a. swish)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=inplace)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {}


class Mish(nn.Mish):
    """Mish(z) = z * tanh(softplus(z))."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=inplace)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {}


class ReLU6(nn.ReLU6):
    """ReLU6(z) = min(max(0, z), 6)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=inplace)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {}


class Softplus(nn.Softplus):
    """Softplus(z) = log(1 + exp(beta z)) / beta, linear above ``threshold``."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__(beta=beta, threshold=threshold)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {"beta": float(self.beta), "threshold": float(self.threshold)}


class Hardswish(nn.Hardswish):
    """Hardswish(z) = z * ReLU6(z + 3) / 6 (Howard et al. 2019, MobileNetV3)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=inplace)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {}


class Hardsigmoid(nn.Hardsigmoid):
    """Hardsigmoid(z) = ReLU6(z + 3) / 6."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__(inplace=inplace)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {}


class Hardtanh(nn.Hardtanh):
    """Hardtanh(z) = min(max(min_val, z), max_val) (default [-1, 1])."""

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> None:
        if not min_val < max_val:
            raise ValueError(f"hardtanh: min_val ({min_val}) must be < max_val ({max_val})")
        super().__init__(min_val=min_val, max_val=max_val, inplace=inplace)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {"min_val": float(self.min_val), "max_val": float(self.max_val)}


class QuickGELU(nn.Module):
    """QuickGELU(z) = z * sigmoid(1.702 z) (CLIP's GELU approximation)."""

    def forward(self, z: Tensor) -> Tensor:
        """``z``: any shape ``(*)``; returns the same shape."""
        return _quick_gelu_fwd(z)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {}


class ReLUSquared(nn.Module):
    """ReLU²(z) = max(0, z)² (So et al. 2021, Primer; used in recent LLMs)."""

    def forward(self, z: Tensor) -> Tensor:
        """``z``: any shape ``(*)``; returns the same shape."""
        return _relu_squared_fwd(z)

    def activation_params(self) -> dict[str, Any]:
        """Registry parameters of this module."""
        return {}


# --------------------------------------------------------------------------------------
# Analytic derivatives. Conventions follow PyTorch's backward kernels exactly, so that
# f'(z) here equals autograd at kinks, at +-inf and at NaN.
# --------------------------------------------------------------------------------------


def _ones(z: Tensor) -> Tensor:
    return torch.ones_like(z)


def _with_limits(z: Tensor, grad: Tensor, at_neg_inf: float, at_pos_inf: float) -> Tensor:
    """``grad`` with the limits of f' put in at z = -inf and z = +inf (where the closed form
    evaluates ``inf * 0``)."""
    grad = torch.where(z == math.inf, torch.full_like(grad, at_pos_inf), grad)
    return torch.where(z == -math.inf, torch.full_like(grad, at_neg_inf), grad)


def _relu_grad(z: Tensor) -> Tensor:
    # threshold_backward: 0 where z <= 0 (so ReLU'(0) = 0), 1 elsewhere (NaN included).
    return torch.where(z <= 0, torch.zeros_like(z), _ones(z))


def _leaky_fwd(z: Tensor, slope: float = 0.01) -> Tensor:
    return F.leaky_relu(z, slope)


def _leaky_grad(z: Tensor, slope: float = 0.01) -> Tensor:
    # leaky_relu_backward: 1 where z > 0, slope elsewhere (so f'(0) = slope).
    return torch.where(z > 0, _ones(z), torch.full_like(z, slope))


def _prelu_fwd(z: Tensor, num_parameters: int = 1, init: float = 0.25) -> Tensor:
    return F.leaky_relu(z, init)


def _prelu_grad(z: Tensor, num_parameters: int = 1, init: float = 0.25) -> Tensor:
    return _leaky_grad(z, init)


def _rrelu_fwd(z: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3) -> Tensor:
    return F.rrelu(z, lower, upper, training=False)


def _rrelu_grad(z: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3) -> Tensor:
    # Deterministic (eval-mode) RReLU is a leaky ReLU with slope (lower + upper) / 2.
    return _leaky_grad(z, (lower + upper) / 2)


def _elu_fwd(z: Tensor, alpha: float = 1.0) -> Tensor:
    return F.elu(z, alpha)


def _elu_grad(z: Tensor, alpha: float = 1.0) -> Tensor:
    # elu_backward: 1 where z > 0, alpha * exp(z) elsewhere (f'(0) = alpha; NaN -> NaN).
    # For z < 0 this is ELU(z) + alpha, the identity the notes give.
    return torch.where(z > 0, _ones(z), alpha * torch.exp(z))


def _selu_fwd(z: Tensor) -> Tensor:
    return F.selu(z)


def _selu_grad(z: Tensor) -> Tensor:
    return SELU_LAMBDA * torch.where(z > 0, _ones(z), SELU_ALPHA * torch.exp(z))


def _celu_fwd(z: Tensor, alpha: float = 1.0) -> Tensor:
    return F.celu(z, alpha)


def _celu_grad(z: Tensor, alpha: float = 1.0) -> Tensor:
    return torch.where(z > 0, _ones(z), torch.exp(z / alpha))


def _gelu_fwd(z: Tensor, approximate: str = "none") -> Tensor:
    return F.gelu(z, approximate=approximate)


def _gelu_grad(z: Tensor, approximate: str = "none") -> Tensor:
    if approximate == "tanh":
        # f = 0.5 z (1 + tanh(u)), u = sqrt(2/pi) (z + 0.044715 z^3). Beyond |z| = 1e3,
        # tanh(u) is +-1 exactly (even in float16) and f' is exactly 1 or 0; clamping there
        # keeps z^3 from overflowing into inf * 0.
        z = z.clamp(-1e3, 1e3)
        u = _SQRT_2_OVER_PI * (z + 0.044715 * z**3)
        du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * z**2)
        # 0.5 (1 + tanh u) = s and 1 - tanh(u)^2 = 4 s (1 - s) with s = sigmoid(2u), written
        # so that neither cancels for u << 0 (autograd's 1 + tanh(u) does, by ~1e-16).
        s, sneg = torch.sigmoid(2 * u), torch.sigmoid(-2 * u)
        return s + 2 * z * s * sneg * du
    # Phi(z) through erfc: no cancellation in 1 + erf(z / sqrt 2) for z << 0.
    cdf = 0.5 * torch.special.erfc(-z * _INV_SQRT_2)
    pdf = _INV_SQRT_2PI * torch.exp(-0.5 * z * z)
    return _with_limits(z, cdf + z * pdf, 0.0, 1.0)


def _silu_fwd(z: Tensor) -> Tensor:
    return F.silu(z)


def _silu_grad(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return _with_limits(z, s * (1 + z * (1 - s)), 0.0, 1.0)


def _mish_fwd(z: Tensor) -> Tensor:
    return F.mish(z)


def _mish_grad(z: Tensor) -> Tensor:
    t = torch.tanh(F.softplus(z))
    return _with_limits(z, t + z * torch.sigmoid(z) * (1 - t * t), 0.0, 1.0)


def _relu6_fwd(z: Tensor) -> Tensor:
    return F.relu6(z)


def _relu6_grad(z: Tensor) -> Tensor:
    # hardtanh_backward: 0 where z <= 0 or z >= 6, 1 strictly inside; NaN -> NaN (autograd's
    # value at NaN differs between its vectorised and scalar kernels).
    inside = torch.where((z > 0) & (z < 6), _ones(z), torch.zeros_like(z))
    return torch.where(torch.isnan(z), z, inside)


def _softplus_fwd(z: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    return F.softplus(z, beta, threshold)


def _softplus_grad(z: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    return torch.where(z * beta > threshold, _ones(z), torch.sigmoid(z * beta))


def _hardswish_fwd(z: Tensor) -> Tensor:
    return F.hardswish(z)


def _hardswish_grad(z: Tensor) -> Tensor:
    # hardswish_backward: 0 where z <= -3, z / 3 + 1/2 inside (exactly 0 at z = -1.5, the
    # minimum), 1 where z >= 3; NaN -> NaN (vectorised and scalar kernels differ there).
    inside = torch.where(z <= -3, torch.zeros_like(z), z / 3 + 0.5)
    return torch.where(z >= 3, _ones(z), inside)


def _hardsigmoid_fwd(z: Tensor) -> Tensor:
    return F.hardsigmoid(z)


def _hardsigmoid_grad(z: Tensor) -> Tensor:
    # hardsigmoid_backward: 1/6 strictly inside (-3, 3), 0 elsewhere, NaN included (both
    # kernels test -3 < z < 3). Torch multiplies by 1/6 rounded to float32 (~3e-8 relative
    # in float64); ours is exact.
    return torch.where((z > -3) & (z < 3), torch.full_like(z, 1.0 / 6.0), torch.zeros_like(z))


def _hardtanh_fwd(z: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    return F.hardtanh(z, min_val, max_val)


def _hardtanh_grad(z: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    # hardtanh_backward: 0 where z <= min_val or z >= max_val, 1 strictly inside; NaN -> NaN
    # (as for ReLU6, the vectorised and scalar kernels differ at NaN).
    inside = torch.where((z > min_val) & (z < max_val), _ones(z), torch.zeros_like(z))
    return torch.where(torch.isnan(z), z, inside)


#: QuickGELU's sigmoid scale (Hendrycks & Gimpel 2016, sec. 2; CLIP).
QUICK_GELU_SCALE = 1.702


def _quick_gelu_fwd(z: Tensor) -> Tensor:
    return z * torch.sigmoid(QUICK_GELU_SCALE * z)


def _quick_gelu_grad(z: Tensor) -> Tensor:
    # d/dz z s(a z) = s + a z s (1 - s), s = sigmoid(a z); limits 0 and 1 at -+inf.
    s, sneg = torch.sigmoid(QUICK_GELU_SCALE * z), torch.sigmoid(-QUICK_GELU_SCALE * z)
    return _with_limits(z, s + QUICK_GELU_SCALE * z * s * sneg, 0.0, 1.0)


def _relu_squared_fwd(z: Tensor) -> Tensor:
    return torch.square(F.relu(z))


def _relu_squared_grad(z: Tensor) -> Tensor:
    # d/dz relu(z)^2 = 2 relu(z): 0 for z <= 0 (so f'(0) = 0), NaN -> NaN, +inf -> +inf.
    return 2 * F.relu(z)


def _never(z: Tensor, **_: Any) -> Tensor:
    return torch.zeros_like(z, dtype=torch.bool)


def _nonpositive(z: Tensor, **_: Any) -> Tensor:
    return z <= 0


def _check_rrelu(params: Mapping[str, Any]) -> None:
    if params["lower"] > params["upper"]:
        raise ValueError(
            f"rrelu: lower ({params['lower']}) must be <= upper ({params['upper']}); "
            f"e.g. 'rrelu(lower=0.1, upper=0.3)'"
        )


def _check_hardtanh(params: Mapping[str, Any]) -> None:
    if not params["min_val"] < params["max_val"]:
        raise ValueError(
            f"hardtanh: min_val ({params['min_val']}) must be < max_val ({params['max_val']}); "
            f"e.g. 'hardtanh(min_val=-2, max_val=2)'"
        )


# --------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------

_SLOPE = ParamSpec("slope", 0.01, float, minimum=0.0, doc="negative-side slope")
_ALPHA = ParamSpec("alpha", 1.0, float, minimum=0.0, exclusive_min=True, doc="negative scale")

register(
    ActivationSpec(
        name="relu",
        formula="max(0, z)",
        derivative_formula="1 if z > 0; 0 if z <= 0",
        params=(),
        forward=F.relu,
        derivative=_relu_grad,
        module=ReLU,
        max_of_linear=True,
        nonnegative=True,
        zero_grad_region="z <= 0",
        zero_grad=_nonpositive,
        saturates=False,
        dead_below=lambda: 0.0,
        torch_modules=(nn.ReLU,),
        torch_functions=(F.relu, F.relu_, torch.relu, torch.relu_),
        tensor_methods=("relu", "relu_"),
        description="rectified linear unit",
    )
)
register(
    ActivationSpec(
        name="leaky_relu",
        formula="z if z > 0; slope * z otherwise",
        derivative_formula="1 if z > 0; slope if z <= 0",
        params=(_SLOPE,),
        forward=_leaky_fwd,
        derivative=_leaky_grad,
        module=LeakyReLU,
        max_of_linear=True,
        zero_grad_region="none (z <= 0 when slope = 0)",
        zero_grad=lambda z, slope=0.01: (z <= 0) if slope == 0 else _never(z),
        saturates=False,
        dead_below=lambda slope=0.01: 0.0 if slope == 0 else None,
        torch_modules=(nn.LeakyReLU,),
        torch_functions=(F.leaky_relu, F.leaky_relu_),
        description="leaky ReLU (Maas et al. 2013)",
    ),
    aliases=("leakyrelu", "leaky"),
)
register(
    ActivationSpec(
        name="prelu",
        formula="z if z > 0; a * z otherwise, a learned",
        derivative_formula="1 if z > 0; a if z <= 0; d/da = z if z <= 0 else 0",
        params=(
            ParamSpec("num_parameters", 1, int, minimum=1, doc="1 shared slope or one per channel"),
            ParamSpec("init", 0.25, float, minimum=0.0, doc="initial slope"),
        ),
        forward=_prelu_fwd,
        derivative=_prelu_grad,
        module=PReLU,
        max_of_linear=True,
        zero_grad_region="none (while a != 0)",
        zero_grad=lambda z, num_parameters=1, init=0.25: (z <= 0) if init == 0 else _never(z),
        saturates=False,
        dead_below=lambda num_parameters=1, init=0.25: 0.0 if init == 0 else None,
        torch_modules=(nn.PReLU,),
        torch_functions=(F.prelu,),
        tensor_methods=("prelu",),
        learnable=True,
        description="parametric ReLU (He et al. 2015)",
    ),
    aliases=("parametric_relu",),
)
register(
    ActivationSpec(
        name="rrelu",
        formula="z if z > 0; s * z otherwise, s ~ U(lower, upper) in training, mean in eval",
        derivative_formula="1 if z > 0; (lower + upper) / 2 if z <= 0 (eval)",
        params=(
            ParamSpec("lower", 1.0 / 8, float, minimum=0.0),
            ParamSpec("upper", 1.0 / 3, float, minimum=0.0),
        ),
        forward=_rrelu_fwd,
        derivative=_rrelu_grad,
        module=RReLU,
        max_of_linear=True,
        zero_grad_region="none",
        zero_grad=_never,
        saturates=False,
        torch_modules=(nn.RReLU,),
        torch_functions=(F.rrelu, F.rrelu_, torch.rrelu, torch.rrelu_),
        description="randomized leaky ReLU (Xu et al. 2015)",
        check=_check_rrelu,
    )
)
register(
    ActivationSpec(
        name="elu",
        formula="z if z > 0; alpha * (exp(z) - 1) otherwise",
        derivative_formula="1 if z > 0; alpha * exp(z) = ELU(z) + alpha if z <= 0",
        params=(_ALPHA,),
        forward=_elu_fwd,
        derivative=_elu_grad,
        module=ELU,
        zero_grad_region="none (-> 0 as z -> -inf)",
        zero_grad=_never,
        saturates=True,
        torch_modules=(nn.ELU,),
        torch_functions=(F.elu, F.elu_),
        description="exponential linear unit (Clevert et al. 2016)",
    )
)
register(
    ActivationSpec(
        name="selu",
        formula="lambda * z if z > 0; lambda * alpha * (exp(z) - 1) otherwise",
        derivative_formula="lambda if z > 0; lambda * alpha * exp(z) if z <= 0",
        params=(),
        forward=_selu_fwd,
        derivative=_selu_grad,
        module=SELU,
        zero_grad_region="none (-> 0 as z -> -inf)",
        zero_grad=_never,
        saturates=True,
        torch_modules=(nn.SELU,),
        torch_functions=(F.selu, F.selu_, torch.selu, torch.selu_),
        description="scaled ELU, self-normalising (Klambauer et al. 2017)",
    )
)
register(
    ActivationSpec(
        name="celu",
        formula="z if z > 0; alpha * (exp(z / alpha) - 1) otherwise",
        derivative_formula="1 if z > 0; exp(z / alpha) if z <= 0",
        params=(_ALPHA,),
        forward=_celu_fwd,
        derivative=_celu_grad,
        module=CELU,
        zero_grad_region="none (-> 0 as z -> -inf)",
        zero_grad=_never,
        saturates=True,
        torch_modules=(nn.CELU,),
        torch_functions=(F.celu, F.celu_, torch.celu, torch.celu_),
        description="continuously differentiable ELU (Barron 2017)",
    )
)
register(
    ActivationSpec(
        name="gelu",
        formula="z * Phi(z) (approximate='tanh': 0.5 z (1 + tanh(sqrt(2/pi)(z + 0.044715 z^3))))",
        derivative_formula="Phi(z) + z * phi(z)",
        params=(ParamSpec("approximate", "none", str, choices=("none", "tanh")),),
        forward=_gelu_fwd,
        derivative=_gelu_grad,
        module=GELU,
        zero_grad_region="none (-> 0 as z -> -inf)",
        zero_grad=_never,
        saturates=True,
        torch_modules=(nn.GELU,),
        torch_functions=(F.gelu,),
        description="Gaussian error linear unit (Hendrycks & Gimpel 2016)",
    )
)
register(
    ActivationSpec(
        name="silu",
        formula="z * sigmoid(z)",
        derivative_formula="s (1 + z (1 - s)), s = sigmoid(z)",
        params=(),
        forward=_silu_fwd,
        derivative=_silu_grad,
        module=SiLU,
        zero_grad_region="none (-> 0 as z -> -inf)",
        zero_grad=_never,
        saturates=True,
        torch_modules=(nn.SiLU,),
        torch_functions=(F.silu,),
        description="sigmoid linear unit / swish (Elfwing et al. 2018)",
    ),
    aliases=("swish",),
)
register(
    ActivationSpec(
        name="mish",
        formula="z * tanh(softplus(z))",
        derivative_formula="t + z sigmoid(z) (1 - t^2), t = tanh(softplus(z))",
        params=(),
        forward=_mish_fwd,
        derivative=_mish_grad,
        module=Mish,
        zero_grad_region="none (-> 0 as z -> -inf)",
        zero_grad=_never,
        saturates=True,
        torch_modules=(nn.Mish,),
        torch_functions=(F.mish,),
        description="Mish (Misra 2019)",
    )
)
register(
    ActivationSpec(
        name="relu6",
        formula="min(max(0, z), 6)",
        derivative_formula="1 if 0 < z < 6; 0 if z <= 0 or z >= 6",
        params=(),
        forward=_relu6_fwd,
        derivative=_relu6_grad,
        module=ReLU6,
        nonnegative=True,
        zero_grad_region="z <= 0 or z >= 6",
        zero_grad=lambda z: (z <= 0) | (z >= 6),
        saturates=False,
        dead_below=lambda: 0.0,
        torch_modules=(nn.ReLU6,),
        torch_functions=(F.relu6,),
        description="ReLU capped at 6 (Krizhevsky 2010)",
    )
)
register(
    ActivationSpec(
        name="softplus",
        formula="log(1 + exp(beta z)) / beta; z where beta z > threshold",
        derivative_formula="sigmoid(beta z); 1 where beta z > threshold",
        params=(
            ParamSpec("beta", 1.0, float, minimum=0.0, exclusive_min=True),
            ParamSpec("threshold", 20.0, float, minimum=0.0, exclusive_min=True),
        ),
        forward=_softplus_fwd,
        derivative=_softplus_grad,
        module=Softplus,
        nonnegative=True,
        zero_grad_region="none (-> 0 as z -> -inf)",
        zero_grad=_never,
        saturates=True,
        torch_modules=(nn.Softplus,),
        torch_functions=(F.softplus,),
        description="smooth ReLU",
    )
)
register(
    ActivationSpec(
        name="hardswish",
        formula="z * relu6(z + 3) / 6: 0 if z <= -3; z if z >= 3",
        derivative_formula="0 if z <= -3; z / 3 + 1/2 if -3 < z < 3; 1 if z >= 3",
        params=(),
        forward=_hardswish_fwd,
        derivative=_hardswish_grad,
        module=Hardswish,
        zero_grad_region="z <= -3 (and the point z = -1.5, the minimum)",
        zero_grad=lambda z: (z <= -3) | (z == -1.5),
        saturates=False,
        dead_below=lambda: -3.0,
        torch_modules=(nn.Hardswish,),
        torch_functions=(F.hardswish,),
        description="hard swish (Howard et al. 2019, MobileNetV3)",
    ),
    aliases=("hard_swish",),
)
register(
    ActivationSpec(
        name="hardsigmoid",
        formula="relu6(z + 3) / 6: 0 if z <= -3; 1 if z >= 3",
        derivative_formula="1/6 if -3 < z < 3; 0 if z <= -3 or z >= 3",
        params=(),
        forward=_hardsigmoid_fwd,
        derivative=_hardsigmoid_grad,
        module=Hardsigmoid,
        nonnegative=True,
        zero_grad_region="z <= -3 or z >= 3",
        zero_grad=lambda z: (z <= -3) | (z >= 3) | torch.isnan(z),
        saturates=True,
        dead_below=lambda: -3.0,
        torch_modules=(nn.Hardsigmoid,),
        torch_functions=(F.hardsigmoid,),
        description="hard sigmoid (Howard et al. 2019, MobileNetV3's gates)",
    ),
    aliases=("hard_sigmoid",),
)
register(
    ActivationSpec(
        name="hardtanh",
        formula="min(max(min_val, z), max_val)",
        derivative_formula="1 if min_val < z < max_val; 0 if z <= min_val or z >= max_val",
        params=(
            ParamSpec("min_val", -1.0, float, doc="lower clip"),
            ParamSpec("max_val", 1.0, float, doc="upper clip"),
        ),
        forward=_hardtanh_fwd,
        derivative=_hardtanh_grad,
        module=Hardtanh,
        zero_grad_region="z <= min_val or z >= max_val (saturated, not dead, unless min_val = 0)",
        zero_grad=lambda z, min_val=-1.0, max_val=1.0: (z <= min_val) | (z >= max_val),
        saturates=True,
        dead_below=lambda min_val=-1.0, max_val=1.0: min_val if min_val == 0 else None,
        torch_modules=(nn.Hardtanh,),
        torch_functions=(F.hardtanh, F.hardtanh_),
        description="hard tanh (nn.ReLU6, a subclass, is relu6)",
        check=_check_hardtanh,
    ),
    aliases=("hard_tanh",),
)
register(
    ActivationSpec(
        name="relu_squared",
        formula="max(0, z)^2",
        derivative_formula="2 max(0, z): 0 if z <= 0",
        params=(),
        forward=_relu_squared_fwd,
        derivative=_relu_squared_grad,
        module=ReLUSquared,
        nonnegative=True,
        zero_grad_region="z <= 0",
        zero_grad=_nonpositive,
        saturates=False,
        dead_below=lambda: 0.0,
        description="squared ReLU (So et al. 2021, Primer)",
    ),
    aliases=("relu2", "squared_relu", "relu_sq"),
)
register(
    ActivationSpec(
        name="quick_gelu",
        formula="z * sigmoid(1.702 z)",
        derivative_formula="s + 1.702 z s (1 - s), s = sigmoid(1.702 z)",
        params=(),
        forward=_quick_gelu_fwd,
        derivative=_quick_gelu_grad,
        module=QuickGELU,
        zero_grad_region="none (-> 0 as z -> -inf)",
        zero_grad=_never,
        saturates=True,
        description="sigmoid approximation of GELU (CLIP; Hugging Face quick_gelu)",
    ),
    aliases=("quickgelu",),
)
