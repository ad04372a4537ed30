"""NumPy reference of every activation and its derivative: the test oracle.

Written from the formulas in the papers, independently of :mod:`deadrelu.activations` and
of torch (this module must never import torch), so that a test comparing the two compares
two implementations, not one with itself. Where a closed form has a second, equivalent
shape, this module uses the other one on purpose (GELU-tanh's derivative through
``sech^2``, Mish's through Misra's rational form in ``e^z``).

Every function takes a float64 array ``z`` of any shape ``(*)`` and returns an array of the
same shape. Conventions (the same as ``deadrelu.activations``' module docstring):

* **forward** is the mathematical value, its limit at ``+-inf``, and NaN at NaN. (Torch's
  own GELU, SiLU and Mish give NaN at ``-inf``; the limit is 0.)
* **derivative** at a kink takes PyTorch's side: ReLU'(0) = 0, LeakyReLU'(0) = slope,
  ELU'(0) = alpha, CELU'(0) = 1, ReLU6'(0) = ReLU6'(6) = 0, Hardswish'(-3) = 0 and
  Hardswish'(3) = 1, Hardsigmoid' and Hardtanh' 0 at their limits; at ``+-inf`` the limit; at NaN
  the negative-side slope for the piecewise-linear ReLU, Leaky ReLU, PReLU and RReLU
  (ReLU: 1, because PyTorch tests ``z <= 0``), NaN for the others.

Sources: ReLU (Nair & Hinton 2010), Leaky ReLU (Maas et al. 2013), PReLU (He et al. 2015),
RReLU (Xu et al. 2015; eval mode: the mean slope), ELU (Clevert et al. 2016), SELU
(Klambauer et al. 2017, constants from the paper's closed form), CELU (Barron 2017), GELU
(Hendrycks & Gimpel 2016), SiLU (Elfwing et al. 2018), Mish (Misra 2019), ReLU6
(Krizhevsky 2010), Softplus with PyTorch's ``beta``/``threshold``, Hardswish and Hardsigmoid
(Howard et al. 2019, "Searching for MobileNetV3", eqs. for h-swish and h-sigmoid), Hardtanh,
squared ReLU (So et al. 2021, "Primer").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["DERIVATIVES", "FORWARDS", "derivative", "forward", "prelu_slope_derivative"]

Array = NDArray[np.float64]

#: SELU constants computed from the closed forms of Klambauer et al. 2017 (eqs. 14-15):
#: alpha_01 = -sqrt(2/pi) / (erfc(1/sqrt 2) e^(1/2) - 1), lambda_01 as written below.
_E = math.e
_ERFC = math.erfc(1.0 / math.sqrt(2.0))
_SELU_ALPHA = -math.sqrt(2.0 / math.pi) / (_ERFC * math.exp(0.5) - 1.0)
_SELU_LAMBDA = (
    (1.0 - math.sqrt(_E) * _ERFC)
    * math.sqrt(2.0 * math.pi)
    / math.sqrt(
        2.0 * math.erfc(math.sqrt(2.0)) * _E**2
        + math.pi * _ERFC**2 * _E
        - 2.0 * (2.0 + math.pi) * _ERFC * math.sqrt(_E)
        + math.pi
        + 2.0
    )
)
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _arr(z: ArrayLike) -> Array:
    return np.asarray(z, dtype=np.float64)


def _limits(z: Array, out: Array, at_neg_inf: float, at_pos_inf: float) -> Array:
    out = np.where(z == np.inf, at_pos_inf, out)
    return np.where(z == -np.inf, at_neg_inf, out)


def _nan_to_nan(z: Array, out: Array) -> Array:
    return np.where(np.isnan(z), np.nan, out)


def _phi(z: Array) -> Array:
    """Standard normal density."""
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _cdf(z: Array) -> Array:
    """Standard normal CDF, accurate in both tails."""
    return 0.5 * _erfc(-z / math.sqrt(2.0))


def _sigmoid(z: Array) -> Array:
    # Two branches so that exp never overflows into a warning-laden inf / inf.
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# ---------------------------------------------------------------- piecewise linear


def relu(z: ArrayLike) -> Array:
    """max(0, z)."""
    z = _arr(z)
    return _nan_to_nan(z, np.where(z > 0, z, 0.0))


def relu_grad(z: ArrayLike) -> Array:
    """0 for z <= 0, 1 otherwise (NaN compares False with ``<=``: 1)."""
    z = _arr(z)
    return np.where(z <= 0, 0.0, 1.0)


def leaky_relu(z: ArrayLike, slope: float = 0.01) -> Array:
    """z for z > 0, slope * z otherwise."""
    z = _arr(z)
    with np.errstate(invalid="ignore"):
        return np.where(z > 0, z, slope * z)


def leaky_relu_grad(z: ArrayLike, slope: float = 0.01) -> Array:
    """1 for z > 0, slope otherwise (z = 0 and NaN included)."""
    z = _arr(z)
    return np.where(z > 0, 1.0, slope)


def _channel_slope(z: Array, init: float, weight: ArrayLike | None) -> Array | float:
    if weight is None:
        return init
    w = np.asarray(weight, dtype=np.float64)
    if w.size == 1:
        return float(w.reshape(()))
    if z.ndim < 2 or z.shape[1] != w.size:
        raise ValueError(f"prelu weight has {w.size} slopes but z has shape {z.shape}")
    return w.reshape((1, w.size) + (1,) * (z.ndim - 2))


def prelu(
    z: ArrayLike, num_parameters: int = 1, init: float = 0.25, weight: ArrayLike | None = None
) -> Array:
    """z for z > 0, a * z otherwise; ``a`` is ``weight`` (one per channel, dim 1) or ``init``."""
    z = _arr(z)
    a = _channel_slope(z, init, weight)
    with np.errstate(invalid="ignore"):
        return np.where(z > 0, z, a * z)


def prelu_grad(
    z: ArrayLike, num_parameters: int = 1, init: float = 0.25, weight: ArrayLike | None = None
) -> Array:
    """d/dz: 1 for z > 0, a otherwise."""
    z = _arr(z)
    a = _channel_slope(z, init, weight)
    return np.where(z > 0, 1.0, a * np.ones_like(z))


def prelu_slope_derivative(z: ArrayLike) -> Array:
    """d PReLU / d a, elementwise: 0 for z > 0, z otherwise."""
    z = _arr(z)
    return np.where(z > 0, 0.0, z)


def rrelu(z: ArrayLike, lower: float = 1.0 / 8, upper: float = 1.0 / 3) -> Array:
    """Eval-mode RReLU: a leaky ReLU with slope (lower + upper) / 2."""
    return leaky_relu(z, (lower + upper) / 2.0)


def rrelu_grad(z: ArrayLike, lower: float = 1.0 / 8, upper: float = 1.0 / 3) -> Array:
    """Eval-mode RReLU': 1 for z > 0, (lower + upper) / 2 otherwise."""
    return leaky_relu_grad(z, (lower + upper) / 2.0)


def relu6(z: ArrayLike) -> Array:
    """min(max(0, z), 6)."""
    z = _arr(z)
    return _nan_to_nan(z, np.clip(z, 0.0, 6.0))


def relu6_grad(z: ArrayLike) -> Array:
    """1 strictly inside (0, 6), 0 elsewhere; NaN at NaN."""
    z = _arr(z)
    return _nan_to_nan(z, np.where((z > 0) & (z < 6), 1.0, 0.0))


def relu_squared(z: ArrayLike) -> Array:
    """max(0, z)^2 (Primer's squared ReLU)."""
    r = relu(z)
    with np.errstate(over="ignore"):
        return r * r


def relu_squared_grad(z: ArrayLike) -> Array:
    """2 max(0, z): 0 for z <= 0, NaN at NaN."""
    return 2.0 * relu(z)


def hardtanh(z: ArrayLike, min_val: float = -1.0, max_val: float = 1.0) -> Array:
    """z clipped to [min_val, max_val]."""
    z = _arr(z)
    return _nan_to_nan(z, np.where(z < min_val, min_val, np.where(z > max_val, max_val, z)))


def hardtanh_grad(z: ArrayLike, min_val: float = -1.0, max_val: float = 1.0) -> Array:
    """1 strictly inside (min_val, max_val), 0 at and beyond the limits; NaN at NaN."""
    z = _arr(z)
    return _nan_to_nan(z, np.where((z > min_val) & (z < max_val), 1.0, 0.0))


def hardsigmoid(z: ArrayLike) -> Array:
    """0 for z <= -3, 1 for z >= 3, z / 6 + 1/2 between (Howard et al. 2019)."""
    z = _arr(z)
    return _nan_to_nan(z, np.where(z <= -3, 0.0, np.where(z >= 3, 1.0, z / 6.0 + 0.5)))


def hardsigmoid_grad(z: ArrayLike) -> Array:
    """1/6 strictly inside (-3, 3), 0 elsewhere (NaN included: PyTorch tests -3 < z < 3)."""
    z = _arr(z)
    return np.where((z > -3) & (z < 3), 1.0 / 6.0, 0.0)


def hardswish(z: ArrayLike) -> Array:
    """z * hardsigmoid(z): 0 for z <= -3, z for z >= 3, z (z + 3) / 6 between."""
    z = _arr(z)
    with np.errstate(over="ignore", invalid="ignore"):
        mid = z * (z + 3.0) / 6.0
        return _nan_to_nan(z, np.where(z <= -3, 0.0, np.where(z >= 3, z, mid)))


def hardswish_grad(z: ArrayLike) -> Array:
    """(2 z + 3) / 6 strictly inside (-3, 3); 0 at and below -3, 1 at and above 3; NaN at NaN."""
    z = _arr(z)
    with np.errstate(over="ignore", invalid="ignore"):
        mid = (2.0 * z + 3.0) / 6.0
    return _nan_to_nan(z, np.where(z <= -3, 0.0, np.where(z >= 3, 1.0, mid)))


# ---------------------------------------------------------------- exponential family


def elu(z: ArrayLike, alpha: float = 1.0) -> Array:
    """z for z > 0, alpha (e^z - 1) otherwise."""
    z = _arr(z)
    with np.errstate(over="ignore"):
        return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0.0)))


def elu_grad(z: ArrayLike, alpha: float = 1.0) -> Array:
    """1 for z > 0, alpha e^z for z <= 0."""
    z = _arr(z)
    return _nan_to_nan(z, np.where(z > 0, 1.0, alpha * np.exp(np.minimum(z, 0.0))))


def selu(z: ArrayLike) -> Array:
    """lambda * ELU_alpha(z) with the self-normalising constants."""
    return _SELU_LAMBDA * elu(z, _SELU_ALPHA)


def selu_grad(z: ArrayLike) -> Array:
    """lambda for z > 0, lambda alpha e^z for z <= 0."""
    return _SELU_LAMBDA * elu_grad(z, _SELU_ALPHA)


def celu(z: ArrayLike, alpha: float = 1.0) -> Array:
    """z for z > 0, alpha (e^(z / alpha) - 1) otherwise."""
    z = _arr(z)
    return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0.0) / alpha))


def celu_grad(z: ArrayLike, alpha: float = 1.0) -> Array:
    """1 for z > 0, e^(z / alpha) for z <= 0."""
    z = _arr(z)
    return _nan_to_nan(z, np.where(z > 0, 1.0, np.exp(np.minimum(z, 0.0) / alpha)))


# ---------------------------------------------------------------- smooth gates


def gelu(z: ArrayLike, approximate: str = "none") -> Array:
    """z Phi(z), or 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) for ``"tanh"``."""
    z = _arr(z)
    with np.errstate(over="ignore", invalid="ignore"):
        if approximate == "tanh":
            u = math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)
            out = 0.5 * z * (1.0 + np.tanh(u))
        else:
            out = z * _cdf(z)
    return _limits(z, out, 0.0, np.inf)


def gelu_grad(z: ArrayLike, approximate: str = "none") -> Array:
    """Phi(z) + z phi(z); tanh form: sigma(2u) + 0.5 z sech^2(u) u'(z)."""
    z = _arr(z)
    with np.errstate(over="ignore", invalid="ignore"):
        if approximate == "tanh":
            small = np.where(np.abs(z) < 1e3, z, 0.0)
            c = math.sqrt(2.0 / math.pi)
            u = c * (small + 0.044715 * small**3)
            sech2 = 1.0 / np.cosh(u) ** 2
            # 0.5 (1 + tanh u) = sigma(2u), without cancellation for u << 0.
            inner = _sigmoid(2.0 * u) + 0.5 * small * sech2 * c * (1.0 + 3.0 * 0.044715 * small**2)
            out = np.where(np.abs(z) < 1e3, inner, np.where(z > 0, 1.0, 0.0))
        else:
            out = _cdf(z) + z * _phi(z)
    return _nan_to_nan(z, _limits(z, out, 0.0, 1.0))


def silu(z: ArrayLike) -> Array:
    """z sigma(z)."""
    z = _arr(z)
    with np.errstate(invalid="ignore"):
        return _limits(z, z * _sigmoid(z), 0.0, np.inf)


def silu_grad(z: ArrayLike) -> Array:
    """sigma(z) + z sigma(z) sigma(-z)."""
    z = _arr(z)
    with np.errstate(invalid="ignore"):
        out = _sigmoid(z) + z * _sigmoid(z) * _sigmoid(-z)
    return _nan_to_nan(z, _limits(z, out, 0.0, 1.0))


def quick_gelu(z: ArrayLike) -> Array:
    """z sigma(1.702 z)."""
    z = _arr(z)
    with np.errstate(invalid="ignore"):
        return _limits(z, z * _sigmoid(1.702 * z), 0.0, np.inf)


def quick_gelu_grad(z: ArrayLike) -> Array:
    """sigma(a z) + a z sigma(a z) sigma(-a z), a = 1.702."""
    z = _arr(z)
    with np.errstate(invalid="ignore"):
        out = _sigmoid(1.702 * z) + 1.702 * z * _sigmoid(1.702 * z) * _sigmoid(-1.702 * z)
    return _nan_to_nan(z, _limits(z, out, 0.0, 1.0))


def _softplus1(z: Array) -> Array:
    return np.logaddexp(0.0, z)


def mish(z: ArrayLike) -> Array:
    """z tanh(softplus(z))."""
    z = _arr(z)
    with np.errstate(invalid="ignore"):
        return _limits(z, z * np.tanh(_softplus1(z)), 0.0, np.inf)


def mish_grad(z: ArrayLike) -> Array:
    """Misra's form e^z omega / delta^2 with omega = 4(z+1) + 4e^2z + e^3z + e^z(4z+6) and
    delta = 2e^z + e^2z + 2, for z <= 20; the tanh/sech form above (no overflow)."""
    z = _arr(z)
    with np.errstate(over="ignore", invalid="ignore"):
        lo = np.minimum(z, 20.0)
        e = np.exp(lo)
        omega = 4.0 * (lo + 1.0) + 4.0 * e**2 + e**3 + e * (4.0 * lo + 6.0)
        delta = 2.0 * e + e**2 + 2.0
        rational = e * omega / delta**2
        sp = _softplus1(z)
        big = np.tanh(sp) + z * _sigmoid(z) / np.cosh(sp) ** 2
        out = np.where(z <= 20.0, rational, big)
    return _nan_to_nan(z, _limits(z, out, 0.0, 1.0))


def softplus(z: ArrayLike, beta: float = 1.0, threshold: float = 20.0) -> Array:
    """log(1 + e^(beta z)) / beta, and z where beta z > threshold (PyTorch's switch)."""
    z = _arr(z)
    with np.errstate(invalid="ignore"):
        return np.where(beta * z > threshold, z, _softplus1(beta * z) / beta)


def softplus_grad(z: ArrayLike, beta: float = 1.0, threshold: float = 20.0) -> Array:
    """sigma(beta z), and 1 where beta z > threshold."""
    z = _arr(z)
    return np.where(beta * z > threshold, 1.0, _sigmoid(beta * z))


#: Registry name -> forward, with the same parameter names as ``deadrelu.activations``.
FORWARDS: dict[str, Callable[..., Array]] = {
    "relu": relu,
    "leaky_relu": leaky_relu,
    "prelu": prelu,
    "rrelu": rrelu,
    "elu": elu,
    "selu": selu,
    "celu": celu,
    "gelu": gelu,
    "silu": silu,
    "mish": mish,
    "relu6": relu6,
    "softplus": softplus,
    "hardswish": hardswish,
    "hardsigmoid": hardsigmoid,
    "hardtanh": hardtanh,
    "relu_squared": relu_squared,
    "quick_gelu": quick_gelu,
}

#: Registry name -> derivative with respect to ``z``.
DERIVATIVES: dict[str, Callable[..., Array]] = {
    "relu": relu_grad,
    "leaky_relu": leaky_relu_grad,
    "prelu": prelu_grad,
    "rrelu": rrelu_grad,
    "elu": elu_grad,
    "selu": selu_grad,
    "celu": celu_grad,
    "gelu": gelu_grad,
    "silu": silu_grad,
    "mish": mish_grad,
    "relu6": relu6_grad,
    "softplus": softplus_grad,
    "hardswish": hardswish_grad,
    "hardsigmoid": hardsigmoid_grad,
    "hardtanh": hardtanh_grad,
    "relu_squared": relu_squared_grad,
    "quick_gelu": quick_gelu_grad,
}


def _lookup(table: dict[str, Callable[..., Array]], name: str) -> Callable[..., Array]:
    if name not in table:
        raise ValueError(f"no reference for {name!r}; known: {', '.join(table)}")
    return table[name]


def forward(name: str, z: ArrayLike, **params: Any) -> Array:
    """f(z) for the activation registered as ``name``, same shape as ``z``."""
    return _lookup(FORWARDS, name)(z, **params)


def derivative(name: str, z: ArrayLike, **params: Any) -> Array:
    """f'(z) for the activation registered as ``name``, same shape as ``z``."""
    return _lookup(DERIVATIVES, name)(z, **params)
