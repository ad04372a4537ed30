"""Born dead: the chance that a deep, narrow ReLU network is dead at initialisation (C15).

Lu, Shin, Su, Karniadakis ("Dying ReLU and Initialization: Theory and Numerical Examples",
2019/2020) call a ReLU network *born dead* when, at initialisation, it is a constant
function of its input: some hidden layer outputs 0 for every input, so everything after it
is constant and no gradient reaches the layers before it. They prove the probability of
this goes to 1 as the depth grows at fixed width under symmetric initialisations, and
propose randomized asymmetric initialization (RAI, :func:`deadrelu.init.rai_sample`)
to lower it.

:func:`born_dead_rate` measures it by Monte Carlo: ``trials`` independent networks
(``depth`` hidden ReLU layers of ``width`` units, input dim ``d_in``), all drawn at once as
batched tensors, evaluated on ``n_inputs`` inputs of the box ``[-sqrt(3), sqrt(3)]^d_in``
(a grid for ``d_in = 1``, uniform draws otherwise). A network counts as born dead when some
hidden layer is exactly 0 on every input. For ``d_in = 1`` with zero biases ("he") the
network is positively homogeneous, so the grid (which holds both signs) decides exactly;
otherwise the estimate can only over-count networks that some unseen input would revive.

:func:`born_dead_probability` computes the same probability for ``"he"`` (zero biases,
Gaussian weights) and ``d_in = 1`` without drawing networks, by a deterministic numerical
integral (see its docstring for the derivation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from deadrelu.init import RAI_SIGMA, rai_sample

__all__ = ["INITS", "BornDead", "born_dead_probability", "born_dead_rate"]

#: Initialisations :func:`born_dead_rate` knows.
INITS = ("he", "he_bias", "rai")


@dataclass(frozen=True)
class BornDead:
    """Result of :func:`born_dead_rate`.

    Attributes:
        rate: fraction of the trials born dead.
        dead: number of trials born dead.
        trials, depth, width, d_in, init, seed: the setting.
        stderr: binomial standard error sqrt(rate (1 - rate) / trials).
        first_dead_layer: ``(trials,)`` int64, the first all-zero hidden layer (1-based),
            0 where the network is alive.
    """

    rate: float
    dead: int
    trials: int
    depth: int
    width: int
    d_in: int
    init: str
    seed: int
    stderr: float
    first_dead_layer: Tensor

    def as_dict(self) -> dict[str, float | int | str]:
        """The scalar fields, for JSON."""
        return {
            "rate": self.rate,
            "dead": self.dead,
            "trials": self.trials,
            "depth": self.depth,
            "width": self.width,
            "d_in": self.d_in,
            "init": self.init,
            "seed": self.seed,
            "stderr": self.stderr,
        }


def _layer(
    init: str, trials: int, rows: int, fan_in: int, g: torch.Generator, sigma: float
) -> tuple[Tensor, Tensor]:
    if init == "he":
        w = torch.randn(trials, rows, fan_in, generator=g) * math.sqrt(2.0 / fan_in)
        return w, torch.zeros(trials, rows)
    if init == "he_bias":  # symmetric weights and biases, both N(0, 2 / fan_in)
        w = torch.randn(trials, rows, fan_in, generator=g) * math.sqrt(2.0 / fan_in)
        return w, torch.randn(trials, rows, generator=g) * math.sqrt(2.0 / fan_in)
    w, b = rai_sample(rows, fan_in, sigma=sigma, batch=(trials,), generator=g)
    assert b is not None
    return w, b


def born_dead_rate(
    depth: int,
    width: int,
    init: str = "he",
    trials: int = 1000,
    seed: int = 0,
    *,
    d_in: int = 1,
    n_inputs: int = 512,
    sigma: float = RAI_SIGMA,
    bias: float | None = None,
    device: torch.device | str = "cpu",
) -> BornDead:
    """Monte Carlo probability that a ``depth`` x ``width`` ReLU network is born dead.

    Args:
        depth: number of hidden ReLU layers (>= 1).
        width: units per hidden layer (>= 1).
        init: ``"he"`` (weights N(0, 2/fan_in), biases 0: symmetric, the usual default),
            ``"he_bias"`` (biases N(0, 2/fan_in) too) or ``"rai"`` (randomized asymmetric,
            :func:`deadrelu.init.rai_sample` with ``sigma``).
        trials: independent networks.
        seed: seeds everything (weights and inputs).
        d_in: input dimension.
        n_inputs: inputs per network.
        sigma: RAI's sigma.
        bias: when given, every hidden bias is set to this constant after the draw (e.g.
            ``init="he", bias=0.01``: the notes' "initialise biases to 0.01"); the grid
            then decides only up to its resolution (a non-zero bias breaks homogeneity).
        device: where the networks are evaluated (the draws are made on the CPU with the
            seeded generator, so the result does not depend on the device but for
            floating-point rounding).

    Returns:
        A :class:`BornDead`.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; known: {', '.join(INITS)}")
    if depth < 1 or width < 1 or trials < 1 or d_in < 1 or n_inputs < 2:
        raise ValueError(
            "born_dead_rate needs depth, width, trials, d_in >= 1 and n_inputs >= 2; got "
            f"depth={depth}, width={width}, trials={trials}, d_in={d_in}, n_inputs={n_inputs}"
        )
    g = torch.Generator().manual_seed(seed)
    a = math.sqrt(3.0)
    if d_in == 1:
        x = torch.linspace(-a, a, n_inputs).unsqueeze(1)
    else:
        x = (torch.rand(n_inputs, d_in, generator=g) * 2 - 1) * a
    h = x.to(device).expand(trials, n_inputs, d_in)
    first_dead = torch.zeros(trials, dtype=torch.int64, device=device)
    with torch.no_grad():
        for layer in range(1, depth + 1):
            w, b = _layer(init, trials, width, h.shape[-1], g, sigma)
            if bias is not None:
                b = torch.full_like(b, float(bias))
            w, b = w.to(device), b.to(device)
            h = torch.relu(torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)))
            dead_now = (h == 0).flatten(1).all(dim=1) & (first_dead == 0)
            first_dead[dead_now] = layer
    dead = int((first_dead > 0).sum())
    rate = dead / trials
    return BornDead(
        rate=rate,
        dead=dead,
        trials=trials,
        depth=depth,
        width=width,
        d_in=d_in,
        init=init,
        seed=seed,
        stderr=math.sqrt(rate * (1 - rate) / trials),
        first_dead_layer=first_dead.cpu(),
    )


def born_dead_probability(
    width: int, depth: int, *, grid: int = 64, points: int = 2**14
) -> list[float]:
    """P(born dead by depth L), L = 1..``depth``, for input dim 1, zero biases and i.i.d.
    Gaussian weights of any variance (``init="he"`` of :func:`born_dead_rate`), computed
    by a deterministic numerical integral instead of drawing networks.

    Derivation. With zero biases every layer is positively homogeneous, so layer ``l``
    maps an input ``x`` to ``max(x, 0) u_l + max(-x, 0) v_l`` where ``u_l``, ``v_l`` in
    ``R^width`` (both ``>= 0``) are the images of ``x = +1`` and ``x = -1``: the net is born
    dead by depth ``L`` exactly when ``u_L = v_L = 0`` (a zero vector stays zero). Layer 1
    gives ``u_1 = relu(w)``, ``v_1 = relu(-w)``: disjoint supports (angle pi/2), and one of
    them is 0 with probability ``2 * 2^-width``. A layer ``z = W h`` with i.i.d. Gaussian
    ``W`` acts on the pair only through the angle ``theta`` between ``u`` and ``v`` (the rows
    of ``W`` are rotation invariant and scale does not change signs): the rows' pairs
    ``(a_i, b_i) = (W u, W v)_i / norms`` are i.i.d. standard bivariate normal with
    correlation ``cos theta``. Hence, per layer and exactly:

    * both die with probability ``q^width``, ``q = P(a <= 0, b <= 0) = (pi - theta) / (2 pi)``;
    * each one dies with probability ``2^-width`` (so exactly one with
      ``2^-width - q^width`` each); a lone surviving vector dies with ``2^-width`` per layer;
    * otherwise the new angle is ``arccos(<a+, b+> / (|a+| |b+|))``.

    So "both alive at angle theta", "one alive" and "dead" form a Markov chain on
    ``[0, pi/2] + 2`` states. The one non-closed-form part, the law of the new angle given
    both survive, is integrated with a fixed (unscrambled) Sobol rule of ``points`` points
    in ``2 * width`` dimensions, on ``grid`` equally spaced angles, with linear
    interpolation between them; the rest of the chain is exact. The result is deterministic;
    doubling ``grid`` and quadrupling ``points`` changes it by about 1e-4 at widths 2-8.

    Args:
        width: units per hidden layer (>= 1).
        depth: hidden layers (>= 1).
        grid: angles in ``[0, pi/2]`` at which the transition is integrated (>= 2).
        points: Sobol points per angle (>= 16).

    Returns:
        ``depth`` probabilities, entry ``L - 1`` for depth ``L``; non-decreasing, 0 at L = 1.
    """
    if width < 1 or depth < 1 or grid < 2 or points < 16:
        raise ValueError(
            "born_dead_probability needs width, depth >= 1, grid >= 2 and points >= 16; got "
            f"width={width}, depth={depth}, grid={grid}, points={points}"
        )
    f64 = torch.float64
    theta = torch.linspace(0.0, math.pi / 2, grid, dtype=f64)
    engine = torch.quasirandom.SobolEngine(2 * width, scramble=False)
    u = engine.draw(points + 1, dtype=f64)[1:].clamp(1e-12, 1 - 1e-12)  # skip the origin
    g = (math.sqrt(2.0) * torch.special.erfinv(2 * u - 1)).view(points, width, 2)
    q = (math.pi - theta) / (2 * math.pi)
    lone = 2.0**-width
    both_die = q**width
    one_dies = 2 * (lone - both_die)
    both_live = 1 - both_die - one_dies
    trans = torch.zeros(grid, grid, dtype=f64)  # both alive at theta_j -> both alive at theta_k
    a = g[..., 0].clamp_min(0)
    for j in range(grid):
        b = (g[..., 0] * torch.cos(theta[j]) + g[..., 1] * torch.sin(theta[j])).clamp_min(0)
        alive = (a > 0).any(dim=1) & (b > 0).any(dim=1)
        aa, bb = a[alive], b[alive]
        cos = (aa * bb).sum(dim=1) / (aa.norm(dim=1) * bb.norm(dim=1))
        pos = torch.arccos(cos.clamp(0.0, 1.0)) / (math.pi / 2) * (grid - 1)
        lo = pos.floor().long().clamp(0, grid - 2)
        w = pos - lo
        row = torch.zeros(grid, dtype=f64)
        row.index_add_(0, lo, 1 - w)
        row.index_add_(0, lo + 1, w)
        trans[j] = row / int(alive.sum()) * both_live[j]
    p_both = torch.zeros(grid, dtype=f64)
    p_both[-1] = 1 - 2 * lone  # layer 1: disjoint supports, angle pi/2
    p_one, p_dead = 2 * lone, 0.0
    out = [p_dead]
    for _ in range(2, depth + 1):
        p_dead += float((p_both * both_die).sum()) + p_one * lone
        p_one = p_one * (1 - lone) + float((p_both * one_dies).sum())
        p_both = p_both @ trans
        out.append(p_dead)
    return out
