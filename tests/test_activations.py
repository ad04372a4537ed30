"""The ReLU family: derivatives against autograd and the NumPy oracle, identities, registry.

Ground truth comes from three independent places: torch's autograd, the NumPy oracle in
``deadrelu.reference`` and closed-form identities (ELU' = ELU + alpha, ...).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from deadrelu import reference
from deadrelu.activations import (
    SELU_ALPHA,
    SELU_LAMBDA,
    Activation,
    ActivationSpec,
    get,
    make_module,
    names,
    spec_for_function,
    spec_for_module,
)

#: Every registered activation at its defaults, plus non-default parameters that move a
#: kink or a constant. ``test_cases_cover_registry`` keeps this list complete.
CASES = [
    "relu",
    "leaky_relu",
    "leaky_relu(0)",
    "leaky_relu(0.3)",
    "prelu",
    "prelu(init=0.1)",
    "rrelu",
    "rrelu(lower=0.05, upper=0.5)",
    "elu",
    "elu(0.3)",
    "elu(alpha=2.5)",
    "selu",
    "celu",
    "celu(0.3)",
    "gelu",
    "gelu(approximate=tanh)",
    "silu",
    "mish",
    "relu6",
    "softplus",
    "softplus(beta=2, threshold=5)",
    "softplus(0.5, 3)",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "hardtanh(-2, 3)",
    "hardtanh(min_val=0, max_val=6)",
    "relu_squared",
    "quick_gelu",
]

EDGES = [0.0, 1e-12, -1e-12, 1.0, -1.0, 50.0, -50.0, math.inf, -math.inf, math.nan]
EDGES += [6.0, 6.0 + 1e-12, 6.0 - 1e-12, 20.0, -20.0, 1e300, -1e300, 2.5, 10.0]
EDGES += [3.0, -3.0, 3.0 + 1e-12, -3.0 - 1e-12, -3.0 + 1e-12, -1.5, 2.0, -2.0]

#: Where torch's own forward kernel gives NaN but the function has a limit (inf * 0).
TORCH_FORWARD_NAN_AT_NEG_INF = {"gelu", "silu", "mish", "hardswish", "quick_gelu"}


def _inputs(seed: int = 0) -> Tensor:
    """``(len(EDGES) + 2000,)`` float64: the edge values, then N(0, 5^2) samples."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat(
        [
            torch.tensor(EDGES, dtype=torch.float64),
            5 * torch.randn(2000, generator=g, dtype=torch.float64),
        ]
    )


def _module64(act: Activation) -> nn.Module:
    m = act.module().to(torch.float64)
    if act.name == "prelu":  # the float32 slope 0.1 is not the float64 0.1
        with torch.no_grad():
            m.weight.fill_(act.params["init"])  # type: ignore[operator]
    m.eval()  # RReLU: the deterministic (mean-slope) mode that the derivative describes
    return m


def _autograd(act: Activation, z: Tensor) -> Tensor:
    z = z.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_module64(act)(z).sum(), z)
    return g


def _close(a: np.ndarray | Tensor, b: np.ndarray | Tensor, rtol: float, atol: float) -> np.ndarray:
    return np.isclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, equal_nan=True)


def test_cases_cover_registry() -> None:
    covered = {get(c).name for c in CASES}  # type: ignore[union-attr]
    assert covered == set(names())
    assert set(reference.FORWARDS) == set(names()) == set(reference.DERIVATIVES)


@pytest.mark.parametrize("case", CASES)
def test_derivative_equals_autograd(case: str) -> None:
    act = get(case)
    assert act is not None
    z = _inputs()
    ours = act.derivative(z)
    auto = _autograd(act, z)
    assert ours.shape == z.shape and ours.dtype == torch.float64
    finite = torch.isfinite(z)
    # CELU's backward kernel rounds 1/alpha to float32 (alpha != 1): ~1e-7 relative.
    rtol = 1e-6 if act.name == "celu" and act.params["alpha"] != 1.0 else 1e-10
    # Hardsigmoid's backward kernel multiplies by 1/6 rounded to float32: ~3e-8 relative.
    rtol = 1e-7 if act.name == "hardsigmoid" else rtol
    # atol: for z << 0 autograd's GELU computes 1 + erf(z / sqrt 2), and tanh-GELU
    # 1 + tanh(u) and 1 - tanh(u)^2, which cancel to ~1e-16 absolute (tanh: ~5e-15 after
    # the factor z u'); ours avoids both (erfc, sigmoid(2u)).
    atol = 1e-14 if act.name == "gelu" else 1e-15
    # Where tanh-GELU's z^3 overflows (|z| > ~1e102), autograd gives inf * 0 = NaN.
    overflow = torch.isnan(auto) & ~torch.isnan(z) & (z.abs() > 1e100)
    finite = finite & ~overflow
    ok = _close(ours[finite], auto[finite], rtol=rtol, atol=atol)
    assert ok.all(), f"{case}: {z[finite][~ok]} ours {ours[finite][~ok]} auto {auto[finite][~ok]}"
    # +-inf: equal where autograd is a number; where it evaluates inf * 0 (NaN) we give the
    # limit, checked against the oracle below.
    inf = torch.isinf(z) & ~torch.isnan(auto)
    assert torch.equal(ours[inf], auto[inf]), case
    # NaN: where ours is a number (piecewise-linear functions), autograd agrees exactly.
    nan = torch.isnan(z) & ~torch.isnan(ours)
    assert torch.equal(ours[nan], auto[nan]), case


@pytest.mark.parametrize("case", CASES)
def test_derivative_equals_oracle(case: str) -> None:
    act = get(case)
    assert act is not None
    z = _inputs(seed=1)
    ours = act.derivative(z).numpy()
    ref = reference.derivative(act.name, z.numpy(), **act.params)
    ok = _close(ours, ref, rtol=1e-9, atol=1e-15)
    assert ok.all(), f"{case}: z={z.numpy()[~ok]} ours={ours[~ok]} oracle={ref[~ok]}"


@pytest.mark.parametrize("case", CASES)
def test_forward_equals_oracle(case: str) -> None:
    act = get(case)
    assert act is not None
    z = _inputs(seed=2)
    ours = act(z).numpy()
    ref = reference.forward(act.name, z.numpy(), **act.params)
    ok = _close(ours, ref, rtol=1e-9, atol=1e-15)
    if act.name in TORCH_FORWARD_NAN_AT_NEG_INF:
        at = (z == -math.inf).numpy()
        assert np.isnan(ours[at]).all() and (ref[at] == 0).all()  # documented torch value
        ok |= at
    assert ok.all(), f"{case}: z={z.numpy()[~ok]} ours={ours[~ok]} oracle={ref[~ok]}"


@pytest.mark.parametrize("case", CASES)
def test_module_and_callable_agree(case: str) -> None:
    act = get(case)
    assert act is not None
    z = _inputs(seed=3)
    assert torch.equal(_module64(act)(z).nan_to_num(7.0), act(z).nan_to_num(7.0))


@pytest.mark.parametrize(
    ("case", "torch_fn"),
    [
        ("relu", F.relu),
        ("leaky_relu(0.2)", lambda z: F.leaky_relu(z, 0.2)),
        ("elu(0.3)", lambda z: F.elu(z, 0.3)),
        ("selu", F.selu),
        ("celu(0.3)", lambda z: F.celu(z, 0.3)),
        ("gelu(approximate=tanh)", lambda z: F.gelu(z, approximate="tanh")),
        ("silu", F.silu),
        ("mish", F.mish),
        ("relu6", F.relu6),
        ("softplus(2, 5)", lambda z: F.softplus(z, 2, 5)),
        ("hardswish", F.hardswish),
        ("hardsigmoid", F.hardsigmoid),
        ("hardtanh(-2, 3)", lambda z: F.hardtanh(z, -2.0, 3.0)),
        ("relu_squared", lambda z: F.relu(z) ** 2),
        ("quick_gelu", lambda z: z * torch.sigmoid(1.702 * z)),
    ],
)
def test_forward_is_torch_kernel_bitwise(case: str, torch_fn: object) -> None:
    act = get(case)
    assert act is not None and callable(torch_fn)
    z = torch.randn(1000, dtype=torch.float32, generator=torch.Generator().manual_seed(4))
    assert torch.equal(act(z), torch_fn(z))
    assert torch.equal(act.module()(z), torch_fn(z))


def _away_from_kinks(act: Activation, n: int = 24) -> Tensor:
    """``(2, n)`` float64 inputs at least 0.1 from every kink (finite differences)."""
    z = 4 * torch.randn(2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    kinks = [0.0, 6.0, -3.0, 3.0]
    if act.name == "hardtanh":
        kinks += [act.params["min_val"], act.params["max_val"]]
    if act.name == "softplus":
        kinks.append(act.params["threshold"] / act.params["beta"])
    for k in kinks:
        near = (z - k).abs() < 0.1
        z = torch.where(near, z + 0.3, z)
    return z


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_module(case: str) -> None:
    act = get(case)
    assert act is not None
    module = _module64(act)
    z = _away_from_kinks(act).requires_grad_(True)
    assert torch.autograd.gradcheck(module, (z,))


@pytest.mark.parametrize("num_parameters", [1, 3])
def test_gradcheck_prelu_parameter(num_parameters: int) -> None:
    module = make_module(f"prelu(num_parameters={num_parameters})").to(torch.float64)
    z = torch.randn(4, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    z = torch.where(z.abs() < 0.1, z + 0.3, z).requires_grad_(True)
    w = torch.tensor([0.25, -0.1, 0.7][:num_parameters], dtype=torch.float64).requires_grad_(True)

    def fn(z: Tensor, w: Tensor) -> Tensor:
        return torch.func.functional_call(module, {"weight": w}, (z,))

    assert torch.autograd.gradcheck(fn, (z, w))
    # dL/da, L = sum f: the sum of z over z <= 0 in each channel (the oracle's d f / d a).
    (gw,) = torch.autograd.grad(fn(z, w).sum(), w)
    dfa = reference.prelu_slope_derivative(z.detach().numpy())
    expected = dfa.sum(axis=(0, 2)) if num_parameters == 3 else np.array([dfa.sum()])
    np.testing.assert_allclose(gw.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("case", "at_zero"),
    [
        ("relu", 0.0),
        ("leaky_relu", 0.01),
        ("leaky_relu(0.2)", 0.2),
        ("prelu", 0.25),
        ("elu", 1.0),
        ("elu(0.3)", 0.3),
        ("selu", SELU_LAMBDA * SELU_ALPHA),
        ("celu(0.3)", 1.0),
        ("gelu", 0.5),
        ("silu", 0.5),
        ("mish", math.tanh(math.log(2.0))),
        ("relu6", 0.0),
        ("softplus(2)", 0.5),
        ("hardswish", 0.5),
        ("hardsigmoid", 1 / 6),
        ("hardtanh", 1.0),
        ("hardtanh(min_val=0, max_val=6)", 0.0),
        ("relu_squared", 0.0),
        ("quick_gelu", 0.5),
    ],
)
def test_derivative_at_zero_follows_pytorch(case: str, at_zero: float) -> None:
    act = get(case)
    assert act is not None
    z = torch.zeros(1, dtype=torch.float64)
    assert act.derivative(z).item() == pytest.approx(at_zero, rel=1e-15)
    assert _autograd(act, z).item() == pytest.approx(at_zero, rel=1e-7)


@pytest.mark.parametrize(
    ("case", "points", "expected"),
    [
        ("hardswish", [-3.0, -1.5, 3.0, -4.0, 4.0], [0.0, 0.0, 1.0, 0.0, 1.0]),
        ("hardsigmoid", [-3.0, 3.0, -4.0, 4.0], [0.0, 0.0, 0.0, 0.0]),
        ("hardtanh", [-1.0, 1.0, -2.0, 2.0], [0.0, 0.0, 0.0, 0.0]),
        ("hardtanh(-2, 3)", [-2.0, 3.0, -1.0, 2.9], [0.0, 0.0, 1.0, 1.0]),
    ],
)
def test_hard_kinks_follow_pytorch(case: str, points: list[float], expected: list[float]) -> None:
    act = get(case)
    assert act is not None
    z = torch.tensor(points, dtype=torch.float64)
    assert act.derivative(z).tolist() == expected
    assert _autograd(act, z).tolist() == expected


def test_relu6_upper_kink_and_limits() -> None:
    act = get("relu6")
    assert act is not None
    z = torch.tensor([5.999, 6.0, 6.001, math.inf, -math.inf], dtype=torch.float64)
    assert act.derivative(z).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_selu_constants_full_precision() -> None:
    # Klambauer et al. 2017, eq. 14: alpha_01 ~ 1.6732632423543772848170429916717,
    # lambda_01 ~ 1.0507009873554804934193349852946; the oracle recomputes them.
    assert pytest.approx(reference._SELU_ALPHA, rel=1e-15) == SELU_ALPHA
    assert pytest.approx(reference._SELU_LAMBDA, rel=1e-15) == SELU_LAMBDA
    assert F.selu(torch.tensor([-1.0], dtype=torch.float64)).item() == pytest.approx(
        SELU_LAMBDA * SELU_ALPHA * (math.exp(-1) - 1), rel=1e-15
    )


# ----------------------------------------------------------------------- properties

_finite = st.floats(min_value=-60, max_value=60, allow_nan=False, width=64)


@given(
    z=st.lists(st.floats(min_value=-50, max_value=-1e-300), min_size=1, max_size=20),
    alpha=st.floats(min_value=0.01, max_value=3.0),
)
def test_elu_derivative_is_elu_plus_alpha_for_negative_z(z: list[float], alpha: float) -> None:
    act = get(f"elu(alpha={alpha!r})")
    assert act is not None
    t = torch.tensor(z, dtype=torch.float64)
    torch.testing.assert_close(act.derivative(t), act(t) + alpha, rtol=1e-12, atol=1e-15)


@given(z=st.lists(_finite, min_size=1, max_size=20))
def test_leaky_relu_with_slope_zero_is_relu(z: list[float]) -> None:
    leaky, relu = get("leaky_relu(0)"), get("relu")
    assert leaky is not None and relu is not None
    t = torch.tensor(z, dtype=torch.float64)
    assert torch.equal(leaky(t), relu(t))
    assert torch.equal(leaky.derivative(t), relu.derivative(t))
    assert torch.equal(leaky.zero_grad(t), relu.zero_grad(t))
    assert torch.equal(_autograd(leaky, t), _autograd(relu, t))


@given(
    z=st.lists(_finite, min_size=3, max_size=3 * 8).filter(lambda v: len(v) % 3 == 0),
    a=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=3, max_size=3),
)
def test_prelu_with_fixed_slope_is_leaky_relu(z: list[float], a: list[float]) -> None:
    t = torch.tensor(z, dtype=torch.float64).reshape(-1, 3)
    module = make_module("prelu(num_parameters=3)").to(torch.float64)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(a, dtype=torch.float64))
    tz = t.clone().requires_grad_(True)
    out = module(tz)
    (g,) = torch.autograd.grad(out.sum(), tz)
    for c in range(3):
        leaky = get(f"leaky_relu({a[c]!r})")
        assert leaky is not None
        assert torch.equal(out[:, c].detach(), leaky(t[:, c]))
        assert torch.equal(g[:, c], leaky.derivative(t[:, c]))


@settings(max_examples=8)
@given(seed=st.integers(min_value=0, max_value=2**31 - 1))
def test_selu_maps_standard_normal_to_mean_0_variance_1(seed: int) -> None:
    """Monte Carlo with n = 200k: the tolerance is 6 standard errors of each estimate,
    estimated from the same sample (CLT), so a correct SELU fails with probability ~2e-9;
    an error of 1 % in lambda moves the variance by 0.02, ~25 standard errors."""
    n = 200_000
    z = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = F.selu(z)
    mean, var = y.mean(), y.var()
    se_mean = (y.std() / math.sqrt(n)).item()
    se_var = (((y - mean) ** 2).std() / math.sqrt(n)).item()
    assert abs(mean.item()) < 6 * se_mean
    assert abs(var.item() - 1.0) < 6 * se_var


def test_selu_fixed_point_by_quadrature() -> None:
    """E[selu(z)] = 0 and E[selu(z)^2] = 1 for z ~ N(0, 1), integrated to ~1e-12."""
    z = torch.linspace(-40, 40, 800_001, dtype=torch.float64)
    w = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    y = F.selu(z)
    assert torch.trapezoid(y * w, z).item() == pytest.approx(0.0, abs=1e-9)
    assert torch.trapezoid(y * y * w, z).item() == pytest.approx(1.0, abs=1e-9)


# ----------------------------------------------------------------------- metadata


@pytest.mark.parametrize("case", CASES)
def test_zero_grad_mask_is_where_derivative_is_zero(case: str) -> None:
    act = get(case)
    assert act is not None
    z = _inputs(seed=7)
    z = z[torch.isfinite(z) & (z.abs() <= 20)]  # far out, exp underflows f' to exactly 0
    assert torch.equal(act.zero_grad(z), act.derivative(z) == 0), case


@pytest.mark.parametrize("case", CASES)
def test_saturation_metadata(case: str) -> None:
    """``saturates``: |f'| stays below 1e-3 on a stretch (width 1) where f is not 0 (a stuck
    unit that is not dead; an isolated zero of f', Hardswish's minimum, is not one).
    Otherwise f' is a constant far out on the negative side (the slope, or 0 in the dead
    region, where f = 0 too). ReLU6's clip at 6 is the one known exception (kept False)."""
    act = get(case)
    assert act is not None
    z = torch.linspace(-60, 60, 24001, dtype=torch.float64)  # step 0.005
    flat = (act.derivative(z).abs() < 1e-3) & (act(z) != 0)
    stuck = flat.unfold(0, 200, 1).all(dim=1)
    if act.spec.saturates:
        assert stuck.any(), case
    else:
        if act.name != "relu6":
            assert not stuck.any(), case
        far, far_far = (torch.tensor([v], dtype=torch.float64) for v in (-60.0, -1e6))
        assert act.derivative(far).item() == act.derivative(far_far).item()


@pytest.mark.parametrize("case", CASES)
def test_dead_below_is_where_output_and_gradient_vanish(case: str) -> None:
    """f = 0 and f' = 0 on (-inf, dead_below], and not just above it; None: nowhere on the
    negative side is the unit dead in that sense."""
    act = get(case)
    assert act is not None
    z = torch.linspace(-50, 50, 20001, dtype=torch.float64)
    dead = (act(z) == 0) & (act.derivative(z) == 0)
    if act.dead_below is None:
        # (from -20: far out, smooth functions underflow to exactly 0 in float64)
        assert not dead[(z >= -20) & (z < 0)].any(), case
    else:
        assert dead[z <= act.dead_below].all(), case
        assert not dead[(z > act.dead_below) & (z < act.dead_below + 0.5)].any(), case


@pytest.mark.parametrize("case", CASES)
def test_shape_flags_match_the_function(case: str) -> None:
    """A flag holds for every parameter value; at the defaults it holds only where flagged."""
    case_act = get(case)
    assert case_act is not None
    z = torch.linspace(-20, 20, 4001, dtype=torch.float64)

    def shapes(act: Activation) -> tuple[bool, bool]:
        f = act(z)
        a = -act(torch.tensor(-1.0, dtype=torch.float64))
        is_max = bool(0 <= a <= 1) and torch.allclose(f, torch.maximum(z, a * z), atol=1e-12)
        return bool((f >= 0).all()), is_max

    nonnegative, is_max = shapes(case_act)
    assert nonnegative or not case_act.spec.nonnegative
    assert is_max or not case_act.spec.max_of_linear
    assert shapes(case_act.spec.bind()) == (case_act.spec.nonnegative, case_act.spec.max_of_linear)


def test_zero_grad_regions_by_construction() -> None:
    z = torch.tensor([-2.0, 0.0, 3.0, 6.0, 7.0])
    relu, relu6, leaky = get("relu"), get("relu6"), get("leaky_relu")
    assert relu is not None and relu6 is not None and leaky is not None
    assert relu.zero_grad(z).tolist() == [True, True, False, False, False]
    assert relu6.zero_grad(z).tolist() == [True, True, False, True, True]
    assert leaky.zero_grad(z).tolist() == [False] * 5
    assert relu.spec.zero_grad_region == "z <= 0"
    hswish, htanh = get("hardswish"), get("hardtanh")
    assert hswish is not None and htanh is not None
    z = torch.tensor([-4.0, -3.0, -2.0, -1.5, 0.0, 3.0])
    assert hswish.zero_grad(z).tolist() == [True, True, False, True, False, False]
    z = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    assert htanh.zero_grad(z).tolist() == [True, True, False, True, True]
    # hardtanh clips to -1 (not 0): saturated, never dead; hardswish dies below -3
    assert htanh.dead_below is None and htanh.spec.saturates
    assert hswish.dead_below == -3.0 and not hswish.spec.saturates


def test_relu6_is_not_hardtanh() -> None:
    """nn.ReLU6 subclasses nn.Hardtanh: it must map to relu6 (F.relu6 and F.hardtanh too)."""
    assert spec_for_module(nn.ReLU6).name == "relu6"  # type: ignore[union-attr]
    assert spec_for_module(nn.ReLU6()).name == "relu6"  # type: ignore[union-attr]
    assert spec_for_module(nn.Hardtanh(-2.0, 2.0)).name == "hardtanh"  # type: ignore[union-attr]
    assert get(nn.Hardtanh(-2.0, 2.0)).params == {"min_val": -2.0, "max_val": 2.0}  # type: ignore[union-attr]
    assert spec_for_function(F.relu6).name == "relu6"  # type: ignore[union-attr]
    assert spec_for_function(F.hardtanh).name == "hardtanh"  # type: ignore[union-attr]


@pytest.mark.parametrize("name", names())
def test_torch_modules_and_functions_map_back(name: str) -> None:
    spec = get(name).spec  # type: ignore[union-attr]
    # every activation torch has a module for covers it (ReLU² and QuickGELU: torch has none)
    assert spec.torch_modules or name in {"relu_squared", "quick_gelu"}, name
    for m in spec.torch_modules:
        assert spec_for_module(m) is spec
    for fn in spec.torch_functions:
        assert spec_for_function(fn) is spec
    assert spec_for_module(spec.module) is spec
    assert spec_for_module(make_module(name)) is spec


def test_non_activations_are_not_covered() -> None:
    assert spec_for_module(nn.Linear) is None
    assert spec_for_module(nn.Linear(2, 2)) is None
    assert spec_for_function(torch.add) is None


# ----------------------------------------------------------------------- registry


def test_parse_strings() -> None:
    assert get("leaky_relu").params == {"slope": 0.01}  # type: ignore[union-attr]
    assert get("leaky_relu(0.2)").params == {"slope": 0.2}  # type: ignore[union-attr]
    assert get("elu(alpha=0.3)").params == {"alpha": 0.3}  # type: ignore[union-attr]
    assert get("Leaky-ReLU(0.2)").name == "leaky_relu"  # type: ignore[union-attr]
    assert get("swish").name == "silu"  # type: ignore[union-attr]
    assert get("gelu(approximate='tanh')").params == {"approximate": "tanh"}  # type: ignore[union-attr]
    assert get("gelu(approximate=tanh)").params == {"approximate": "tanh"}  # type: ignore[union-attr]
    assert get("softplus(2, threshold=5)").params == {"beta": 2.0, "threshold": 5.0}  # type: ignore[union-attr]
    assert get(None) is None


@pytest.mark.parametrize("case", CASES)
def test_str_round_trips(case: str) -> None:
    act = get(case)
    assert act is not None
    assert get(str(act)) == act


def test_get_classes_instances_specs() -> None:
    assert get(nn.LeakyReLU(0.2)).params == {"slope": 0.2}  # type: ignore[union-attr]
    assert get(nn.ELU).params == {"alpha": 1.0}  # type: ignore[union-attr]
    assert get(nn.ELU(alpha=0.5)).params == {"alpha": 0.5}  # type: ignore[union-attr]
    assert get(nn.Softplus(beta=2.0, threshold=10.0)).params == {"beta": 2.0, "threshold": 10.0}  # type: ignore[union-attr]
    assert get(nn.GELU(approximate="tanh")).params == {"approximate": "tanh"}  # type: ignore[union-attr]
    assert get(nn.PReLU(3, init=0.1)).params == {"num_parameters": 3, "init": 0.1}  # type: ignore[union-attr]
    assert get(nn.RReLU(0.1, 0.2)).params == {"lower": 0.1, "upper": 0.2}  # type: ignore[union-attr]
    act = get("elu(0.3)")
    assert act is not None
    assert get(act) is act
    assert get(act.spec) == get("elu")
    assert get(act.module()) == act
    assert isinstance(act.spec, ActivationSpec)


def test_make_module_builds_parameters() -> None:
    m = make_module("leaky_relu(0.2)")
    assert isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2
    p = make_module("prelu(num_parameters=4, init=0.1)")
    assert p.weight.shape == (4,) and torch.all(p.weight == 0.1)  # type: ignore[operator]
    assert isinstance(make_module(nn.SELU), nn.SELU)


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("nope", "known: relu, leaky_relu"),
        ("leaky_relu(-0.1)", "'slope' must be >= 0"),
        ("elu(alpha=0)", "'alpha' must be > 0"),
        ("elu(alpha=-1)", "'alpha' must be > 0"),
        ("elu(alpha=inf)", "must be finite"),
        ("elu(alpha=nan)", "must be finite"),
        ("elu(1e400)", "must be finite"),
        ("celu(-0.5)", "'alpha' must be > 0"),
        ("softplus(beta=0)", "'beta' must be > 0"),
        ("rrelu(lower=0.5, upper=0.1)", "lower (0.5) must be <= upper (0.1)"),
        ("rrelu(-0.1)", "'lower' must be >= 0"),
        ("prelu(num_parameters=0)", "'num_parameters' must be >= 1"),
        ("prelu(num_parameters=2.5)", "must be an integer"),
        ("gelu(approximate=fast)", "must be one of ['none', 'tanh']"),
        ("relu(1)", "relu takes at most 0 parameter(s)"),
        ("hardtanh(1, -1)", "min_val (1.0) must be < max_val (-1.0)"),
        ("hardtanh(min_val=2, max_val=2)", "must be < max_val"),
        ("elu(beta=1)", "elu has no parameter 'beta'; valid: alpha"),
        ("elu(alpha=[1])", "must be a number"),
        ("elu(1 + 1)", "must be numbers or words"),
        ("elu(alpha=0.3", "cannot parse"),
        ("elu(**d)", "cannot parse"),
        ("elu(*d)", "cannot parse"),
        ("leaky_relu(0.2)(0.3)", "cannot parse activation 'leaky_relu(0.2)(0.3)'"),
        ("leaky_relu(0.2)(0.3)", "expected 'name', 'name(value, ...)'"),
        ("elu(alpha=1, alpha=2)", "cannot parse activation 'elu(alpha=1, alpha=2)'"),
        ("elu(alpha=1, alpha=2)", "e.g. 'leaky_relu(0.2)' or 'elu(alpha=0.3)'"),
        ("leaky_relu(0.2, slope=0.3)", "'slope' given twice"),
        ("leaky_relu(0.2).x", "cannot parse activation 'leaky_relu(0.2).x'"),
        ("leaky_relu(0.2)[0]", "cannot parse"),
        ("(0.2)", "unknown activation ''"),
    ],
)
def test_bad_strings_raise_value_error(bad: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        get(bad)
    assert message in str(info.value)


def test_bad_objects_raise_value_error() -> None:
    with pytest.raises(ValueError, match="known: relu"):
        get(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="known: relu"):
        get(nn.Tanh)
    with pytest.raises(ValueError, match="pass a name such as"):
        get(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs an activation"):
        make_module(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="upper"):
        make_module(nn.RReLU(0.5, 0.1))


@pytest.mark.parametrize("shape", [(2, 4), (2, 4, 5), (4,), ()])
def test_prelu_channel_mismatch_is_a_value_error(shape: tuple[int, ...]) -> None:
    module = make_module("prelu(num_parameters=3)")
    with pytest.raises(ValueError, match="num_parameters=1 for one shared slope"):
        module(torch.randn(shape))


def test_prelu_shared_slope_takes_any_shape() -> None:
    module = make_module("prelu")
    for shape in [(2, 4), (4,), (), (2, 3, 4, 5)]:
        z = torch.randn(shape)
        assert torch.equal(module(z), F.leaky_relu(z, 0.25))


@pytest.mark.parametrize("case", CASES)
def test_derivative_float32_matches_autograd(case: str) -> None:
    act = get(case)
    assert act is not None
    z = _inputs(seed=8).float()
    z = z[torch.isfinite(z)]  # 1e300 is inf in float32
    zz = z.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(act.module().eval()(zz).sum(), zz)
    ours = act.derivative(z)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, auto, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("name", names())
def test_tensor_methods_exist(name: str) -> None:
    spec = get(name).spec  # type: ignore[union-attr]
    for method in spec.tensor_methods:
        assert callable(getattr(torch.Tensor, method))


def test_benchmark_script_runs() -> None:
    """Smoke test of benchmarks/activations.py (tiny tensor; no timing is asserted)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "activations.py"
    argv = ["--elements", "256", "--repeats", "3", "--warmup", "1", "--inner", "1"]
    out = subprocess.run(
        [sys.executable, str(script), *argv], capture_output=True, text=True, check=True
    )
    doc = json.loads(out.stdout)
    assert set(names()) <= set(doc["results"])
    assert all(r["ratio"] > 0 and r["control_ratio"] > 0 for r in doc["results"].values())


# ----------------------------------------------------------------------- other classes


def test_presets_name_activations_with_parameters() -> None:
    for name in ("gelu_tanh", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "GELU-New"):
        assert get(name) == get("gelu(approximate=tanh)"), name
    assert get("relu2") == get("relu_squared")


def _foreign(module: str, name: str, forward: object) -> type[nn.Module]:
    """A class that looks like another package's (``__module__``), without that package."""

    def fwd(self: nn.Module, x: Tensor) -> Tensor:
        return forward(x)  # type: ignore[operator, no-any-return]

    cls = type(name, (nn.Module,), {"forward": fwd})
    cls.__module__ = module
    return cls


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NewGELUActivation", "gelu(approximate=tanh)"),
        ("GELUActivation", "gelu"),
        ("FastGELUActivation", "gelu(approximate=tanh)"),
        ("QuickGELUActivation", "quick_gelu"),
        ("ReLUSquaredActivation", "relu_squared"),
        ("SiLUActivation", "silu"),
    ],
)
def test_hugging_face_classes_by_name(name: str, expected: str) -> None:
    cls = _foreign("transformers.activations", name, torch.relu)
    assert get(cls()) == get(expected)
    assert spec_for_module(cls) is get(expected).spec  # type: ignore[union-attr]
    # the same name elsewhere is not an activation
    assert spec_for_module(_foreign("mypackage.layers", name, torch.relu)) is None


def test_hugging_face_classes_real() -> None:
    """The classes transformers really ships compute what they are mapped to."""
    acts = pytest.importorskip("transformers.activations", reason="transformers not installed")
    z = torch.linspace(-8, 8, 1601, dtype=torch.float64)
    for hf_name, atol in [
        ("gelu_new", 1e-12),
        ("gelu", 0.0),
        ("gelu_fast", 1e-9),  # its constant 0.7978845608 is sqrt(2/pi) to 10 digits
        ("quick_gelu", 1e-15),
        ("relu2", 0.0),
        ("silu", 0.0),
        ("gelu_pytorch_tanh", 0.0),
    ]:
        module = acts.ACT2FN[hf_name]
        act = get(module)
        assert act is not None, hf_name
        torch.testing.assert_close(module(z), act(z), rtol=0, atol=atol, msg=hf_name)


def test_deadrelu_import_does_not_import_zoos() -> None:
    import subprocess
    import sys

    code = (
        "import sys, deadrelu\n"
        "bad = [m for m in ('transformers', 'timm', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_register_module() -> None:
    from deadrelu import activations

    class MyGELU(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return F.gelu(x, approximate="tanh")

    class MyLeaky(nn.Module):
        def __init__(self, slope: float) -> None:
            super().__init__()
            self.slope = slope

        def forward(self, x: Tensor) -> Tensor:
            return F.leaky_relu(x, self.slope)

    assert spec_for_module(MyGELU) is None
    with pytest.raises(ValueError, match=r"register_module\(MyGELU, like="):
        get(MyGELU())
    try:
        activations.register_module(MyGELU, like="gelu_tanh")
        activations.register_module(MyLeaky, like=lambda m: f"leaky_relu({m.slope})")
        assert get(MyGELU()) == get("gelu(approximate=tanh)")
        assert get(MyGELU) == get("gelu(approximate=tanh)")
        assert get(type("Sub", (MyGELU,), {})()) == get("gelu(approximate=tanh)")  # subclass
        assert get(MyLeaky(0.3)) == get("leaky_relu(0.3)")
        assert spec_for_module(MyLeaky(0.3)) is get("leaky_relu").spec  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="pass an instance"):
            get(MyLeaky)
        # a registered class can be more specific than a torch one
        activations.register_module(nn.ReLU6, like="hardtanh(0, 6)")
        assert get(nn.ReLU6()) == get("hardtanh(0, 6)")
    finally:
        for cls in (MyGELU, MyLeaky, nn.ReLU6):
            activations._USER_MODULES.pop(cls, None)
    assert get(nn.ReLU6()) == get("relu6")
    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        activations.register_module(int, like="relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        activations.register_module(MyGELU, like="nope")
    assert MyGELU not in activations._USER_MODULES
