"""Born dead: the chance that a deep, narrow ReLU network is dead at initialisation (C15).

Lu, Shin, Su, Karniadakis ("Dying ReLU and Initialization: Theory and Numerical Examples",
2019/2020) call a ReLU network *born dead* when, at initialisation, it is a constant
function of its input: some hidden layer outputs 0 for every input, so everything after it
is constant and no gradient reaches the layers before it. They prove the probability of
this goes to 1 as the depth grows at fixed width under symmetric initialisations, and
propose randomized asymmetric initialization (RAI, :func:`deadrelu.remedies.rai_sample`)
to lower it.

:func:`born_dead_rate` measures it by Monte Carlo: ``trials`` independent networks
(``depth`` hidden ReLU layers of ``width`` units, input dim ``d_in``), all drawn at once as
batched tensors, evaluated on ``n_inputs`` inputs of the box ``[-sqrt(3), sqrt(3)]^d_in``
(a grid for ``d_in = 1``, uniform draws otherwise). A network counts as born dead when some
hidden layer is exactly 0 on every input. For ``d_in = 1`` with zero biases ("he") the
network is positively homogeneous, so the grid (which holds both signs) decides exactly;
otherwise the estimate can only over-count networks that some unseen input would revive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from deadrelu.remedies import RAI_SIGMA, rai_sample

__all__ = ["INITS", "BornDead", "born_dead_rate"]

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
    device: torch.device | str = "cpu",
) -> BornDead:
    """Monte Carlo probability that a ``depth`` x ``width`` ReLU network is born dead.

    Args:
        depth: number of hidden ReLU layers (>= 1).
        width: units per hidden layer (>= 1).
        init: ``"he"`` (weights N(0, 2/fan_in), biases 0: symmetric, the usual default),
            ``"he_bias"`` (biases N(0, 2/fan_in) too) or ``"rai"`` (randomized asymmetric,
            :func:`deadrelu.remedies.rai_sample` with ``sigma``).
        trials: independent networks.
        seed: seeds everything (weights and inputs).
        d_in: input dimension.
        n_inputs: inputs per network.
        sigma: RAI's sigma.
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
