"""The NumPy oracle checked on its own: finite differences, known values, no torch."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from deadrelu import reference as R

#: (name, params, kinks): every registered function, with the points where f' jumps.
FUNCTIONS: list[tuple[str, dict[str, object], list[float]]] = [
    ("relu", {}, [0.0]),
    ("leaky_relu", {"slope": 0.2}, [0.0]),
    ("prelu", {"init": 0.1}, [0.0]),
    ("rrelu", {"lower": 0.1, "upper": 0.3}, [0.0]),
    ("elu", {"alpha": 0.3}, [0.0]),
    ("selu", {}, [0.0]),
    ("celu", {"alpha": 0.3}, [0.0]),
    ("gelu", {}, []),
    ("gelu", {"approximate": "tanh"}, []),
    ("silu", {}, []),
    ("mish", {}, []),
    ("relu6", {}, [0.0, 6.0]),
    ("softplus", {"beta": 2.0, "threshold": 5.0}, [2.5]),
    ("hardswish", {}, [-3.0, 3.0]),
    ("hardsigmoid", {}, [-3.0, 3.0]),
    ("hardtanh", {}, [-1.0, 1.0]),
    ("hardtanh", {"min_val": -2.0, "max_val": 0.5}, [-2.0, 0.5]),
    ("relu_squared", {}, [0.0]),
    ("quick_gelu", {}, []),
]

EDGES = np.array([0.0, 1e-12, -1e-12, 1, -1, 50, -50, np.inf, -np.inf, np.nan, 6, 1e300, -1e300])


@pytest.mark.parametrize(("name", "params", "kinks"), FUNCTIONS)
def test_derivative_matches_central_differences(
    name: str, params: dict[str, object], kinks: list[float]
) -> None:
    z = np.random.default_rng(0).uniform(-8, 8, 2000)
    for k in kinks:
        z = z[np.abs(z - k) > 1e-3]
    h = 1e-6
    fd = (R.forward(name, z + h, **params) - R.forward(name, z - h, **params)) / (2 * h)
    np.testing.assert_allclose(R.derivative(name, z, **params), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("name", "params", "kinks"), FUNCTIONS)
def test_edges_are_defined_and_quiet(
    name: str, params: dict[str, object], kinks: list[float]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = R.forward(name, EDGES, **params)
        d = R.derivative(name, EDGES, **params)
    assert f.shape == d.shape == EDGES.shape
    finite = ~np.isnan(EDGES)
    assert not np.isnan(f[finite]).any(), name  # limits at +-inf, never inf * 0
    assert not np.isnan(d[finite]).any(), name
    assert np.isnan(f[~finite]).all(), name  # NaN in, NaN out (forward)
    # derivative limits: 0 or the negative slope at -inf, 1 (lambda for SELU) or 0 at +inf
    # (ReLU^2: f' = 2z -> inf)
    assert d[np.inf == EDGES][0] in {1.0, 0.0, R._SELU_LAMBDA} or name == "relu_squared"


def test_known_values() -> None:
    phi1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert R.gelu(1.0) == pytest.approx(phi1, rel=1e-15)
    assert R.gelu_grad(0.0) == 0.5
    assert R.elu(-1.0, 0.3) == pytest.approx(0.3 * (math.exp(-1) - 1), rel=1e-15)
    assert R.silu(1.0) == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-15)
    assert R.mish(1.0) == pytest.approx(math.tanh(math.log1p(math.e)), rel=1e-15)
    assert R.mish_grad(0.0) == pytest.approx(math.tanh(math.log(2)), rel=1e-14)
    assert R.softplus(0.0) == pytest.approx(math.log(2), rel=1e-15)
    assert R.relu6(7.0) == 6.0 and R.relu6_grad(6.0) == 0.0
    assert R.relu_grad(0.0) == 0.0 and R.leaky_relu_grad(0.0, 0.2) == 0.2
    assert R.elu_grad(0.0, 0.3) == 0.3 and R.celu_grad(0.0, 0.3) == 1.0
    # Klambauer et al. 2017, eq. 14
    assert pytest.approx(1.6732632423543772848, rel=1e-15) == R._SELU_ALPHA
    assert pytest.approx(1.0507009873554804934, rel=1e-15) == R._SELU_LAMBDA


def test_prelu_per_channel_weight() -> None:
    z = np.array([[-1.0, -2.0, 3.0], [4.0, -5.0, -6.0]])
    w = np.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(R.prelu(z, weight=w), [[-0.1, -0.4, 3.0], [4.0, -1.0, -1.8]])
    np.testing.assert_allclose(R.prelu_grad(z, weight=w), [[0.1, 0.2, 1.0], [1.0, 0.2, 0.3]])
    np.testing.assert_allclose(R.prelu_slope_derivative(z), [[-1, -2, 0], [0, -5, -6]])
    with pytest.raises(ValueError, match="3 slopes"):
        R.prelu(np.ones((2, 4)), weight=w)


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="known: relu, leaky_relu"):
        R.forward("tanh", np.zeros(1))
    with pytest.raises(ValueError, match="known: relu"):
        R.derivative("tanh", np.zeros(1))


def test_oracle_does_not_import_torch() -> None:
    source = Path(R.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+torch", source, flags=re.MULTILINE)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import importlib.util as u\n"
        f"s = u.spec_from_file_location('ref', {R.__file__!r}); m = u.module_from_spec(s)\n"
        "s.loader.exec_module(m); print(m.relu_grad(0.0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0.0"
