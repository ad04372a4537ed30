"""The live checks, as experiments of the common shape: L1 (C1, C2), L13 (C13), L14 (C14).

They are deterministic (no seeds: ``Sweep.n_seeds == 1``, nothing to resample) and fast
(well under a second together). Each ``sweep`` computes a table that the report shows as
it is (``numbers["table"]``: ``columns`` and ``rows``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deadrelu.activations import get, names
from deadrelu.classify import dead_mask
from deadrelu.lab.core import (
    ClaimVerdict,
    Experiment,
    Judgement,
    LabConfig,
    SeedIndex,
    Sweep,
    register,
)
from deadrelu.scan import scan

__all__ = ["DEAD_UNITS", "DERIVATIVES", "SELU_NOTES"]


# --------------------------------------------------------------------------------------
# L1: a unit with bias -1000 is dead and gets exactly zero gradient (C1, C2)
# --------------------------------------------------------------------------------------


def _dead_unit_sweep(cfg: LabConfig) -> Sweep:
    """Linear(4, 6) -> ReLU -> Linear(6, 3); units 2 and 4 get bias -1000; 512 inputs."""
    g = torch.Generator().manual_seed(0)
    lin1, lin2 = nn.Linear(4, 6), nn.Linear(6, 3)
    model = nn.Sequential(lin1, nn.ReLU(), lin2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        lin1.bias[2] = -1000.0
        lin1.bias[4] = -1000.0
    x = torch.randn(512, 4, generator=g)
    y = torch.randint(0, 3, (512,), generator=g)
    report = scan(model, x)  # the library's own pass: site "1" is the ReLU
    found_scan = [int(u) for u in report.dead_units("1")]
    z = lin1(x)  # (N, 6)
    h = torch.relu(z)
    loss = nn.functional.cross_entropy(lin2(h), y)
    loss.backward()
    assert lin1.weight.grad is not None and lin1.bias.grad is not None
    z, h = z.detach(), h.detach()
    dead = dead_mask((z > 0).sum(dim=0))
    found = [int(i) for i in torch.nonzero(dead).flatten()]
    bound = 10.0  # certificate domain: every input in the box [-10, 10]^4
    zmax_box = (lin1.bias + bound * lin1.weight.abs().sum(dim=1)).detach()
    rows = []
    for u in range(6):
        rows.append(
            [
                u,
                float(lin1.bias[u].detach()),
                u in found_scan,
                bool(dead[u]),
                float(h[:, u].abs().max()),
                float(lin1.weight.grad[u].abs().max()),
                float(lin1.bias.grad[u].abs()),
                float(zmax_box[u]) < 0,
            ]
        )
    numbers = {
        "dead_found": found,
        "dead_found_scan": found_scan,
        "planted": [2, 4],
        "table": {
            "columns": [
                "unit",
                "bias",
                "dead (scan)",
                "dead (classify)",
                "max |output|",
                "max |dL/dw|",
                "|dL/db|",
                "certified dead on box",
            ],
            "rows": rows,
        },
    }
    return Sweep(numbers=numbers, n_seeds=1)


def _dead_unit_judge(sweep: Sweep, seeds: SeedIndex) -> Judgement:
    n = sweep.numbers
    rows = n["table"]["rows"]
    dead_ok = all(r[4] == 0.0 and r[5] == 0.0 and r[6] == 0.0 for r in rows if r[3])
    live_ok = all(r[5] > 0.0 or r[6] > 0.0 for r in rows if not r[3])
    found_ok = n["dead_found"] == n["planted"] and n["dead_found_scan"] == n["planted"]
    certified = [r[0] for r in rows if r[7]]
    c1 = ClaimVerdict(
        "supported" if found_ok and certified == n["planted"] else "not supported",
        (
            "supported if exactly the planted units [2, 4] are found dead, by deadrelu.scan "
            "and by deadrelu.classify.dead_mask, and the data-free certificate over the box "
            f"[-10, 10]^4 proves exactly them dead; found {n['dead_found_scan']} (scan), "
            f"{n['dead_found']} (classify), certified {certified}"
        ),
        f"units killed by a -1000 bias found exactly, {n['dead_found_scan']}; certified "
        "dead on the box",
        {"found": n["dead_found"], "found_scan": n["dead_found_scan"], "certified": certified},
    )
    c2 = ClaimVerdict(
        "supported" if found_ok and dead_ok and live_ok else "not supported",
        (
            "supported if the dead units' outputs and the gradients of their weights and bias "
            "are exactly 0 and every live unit gets a non-zero gradient; dead units zero: "
            f"{dead_ok}, live units non-zero: {live_ok}"
        ),
        "their dL/dw and dL/db are exactly 0",
        {"dead_gradients_zero": dead_ok, "live_gradients_nonzero": live_ok},
    )
    return Judgement({"C1": c1, "C2": c2})


DEAD_UNITS = register(
    Experiment(
        id="L1",
        claims=("C1", "C2"),
        title="a unit with bias -1000: dead, and its gradient is exactly 0",
        question="Does the library find a dead unit, and is its gradient exactly zero?",
        method=(
            "Linear(4, 6) -> ReLU -> Linear(6, 3), weights N(0, 0.25) from seed 0, biases of "
            "units 2 and 4 set to -1000; 512 Gaussian inputs. Dead units found by "
            "deadrelu.scan and, directly, by deadrelu.classify.dead_mask (never z > 0 on any "
            "input); then one cross-entropy backward. The last column is the data-free "
            "certificate over the box [-10, 10]^4: max of w.x + b over the box, "
            "b + 10 * sum|w|, is below 0 (C1's 'for any input value')."
        ),
        sweep=_dead_unit_sweep,
        judge=_dead_unit_judge,
        caveats=("A constructed case: it shows the mechanism, not how often units die.",),
    )
)


# --------------------------------------------------------------------------------------
# L14: derivative formulas against autograd (C14)
# --------------------------------------------------------------------------------------


def _derivative_sweep(cfg: LabConfig) -> Sweep:
    """Each registered activation's formula f'(z) against autograd, float64."""
    z = torch.cat(
        [
            torch.linspace(-8.0, 8.0, 1601, dtype=torch.float64),
            torch.tensor([0.0, 6.0, -1e-9, 1e-9, -30.0, 30.0], dtype=torch.float64),
        ]
    )
    rows: list[list[Any]] = []
    for name in names():
        act = get(name)
        assert act is not None
        zz = z.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(act(zz).sum(), zz)
        err = float((act.derivative(z) - auto).abs().max())
        z0 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        (auto0,) = torch.autograd.grad(act(z0).sum(), z0)
        f0 = float(act.derivative(torch.zeros(1, dtype=torch.float64))[0])
        rows.append([str(act), act.spec.derivative_formula, f0, float(auto0[0]), err])
    columns = ["activation", "f'(z) formula", "f'(0) formula", "f'(0) autograd", "max |diff|"]
    return Sweep(numbers={"table": {"columns": columns, "rows": rows}}, n_seeds=1)


#: Exact match: the formula and autograd agree to float64 rounding.
EXACT = 1e-12
#: Some of torch's float64 backward kernels use float32 constants (hardsigmoid's 1/6 is
#: 0.16666667163...): a relative difference within float32 rounding is that, not an error.
FLOAT32_REL = 2.0**-23


def _within(diff: float, reference: float) -> str:
    if diff <= EXACT:
        return "exact"
    if diff <= FLOAT32_REL * max(abs(reference), 1e-300) * 2:
        return "float32 constant"
    return "differs"


def _derivative_judge(sweep: Sweep, seeds: SeedIndex) -> Judgement:
    rows = sweep.numbers["table"]["rows"]
    worst = max(r[4] for r in rows)
    status = {}
    for name, _formula, f0, auto0, err in rows:
        # err is max |formula - autograd| over the grid; compare it with |f'| <= max(1, |f0|)
        grid = _within(err, max(1.0, abs(f0)))
        zero = "exact" if f0 == auto0 else _within(abs(f0 - auto0), auto0)
        if "differs" in (grid, zero):
            status[name] = "differs"
        else:
            status[name] = "float32 constant" if "float32 constant" in (grid, zero) else "exact"
    differs = sorted(k for k, v in status.items() if v == "differs")
    loose = sorted(k for k, v in status.items() if v == "float32 constant")
    ok = not differs
    note = (
        f"; {', '.join(loose)}: torch's float64 backward uses a float32 constant, so autograd "
        "differs from the exact formula by float32 rounding"
        if loose
        else ""
    )
    return Judgement(
        {
            "C14": ClaimVerdict(
                "supported" if ok else "not supported",
                (
                    f"supported if, for every activation, formula and autograd agree to "
                    f"{EXACT:g} on the grid and at z = 0, or within float32 rounding "
                    f"(relative {2 * FLOAT32_REL:.3g}) where torch's kernel uses a float32 "
                    f"constant; measured max |diff| {worst:.3g}; differing: {differs or 'none'}"
                    f"{note}"
                ),
                f"{len(rows)} activations, max |formula - autograd| = {worst:.2g}"
                + (f" ({', '.join(loose)}: torch uses a float32 constant)" if loose else ""),
                {"max_abs_diff": worst, "status": status, "n": len(rows)},
            )
        }
    )


DERIVATIVES = register(
    Experiment(
        id="L14",
        claims=("C14",),
        title="derivative formulas vs autograd",
        question="Does each activation's closed-form derivative equal autograd's, z = 0 too?",
        method=(
            "Each activation of deadrelu.activations at its default parameters: the "
            "closed-form f'(z) against torch.autograd on 1607 points in [-30, 30] (float64), "
            "including z = 0 and the kinks. f'(0) is the convention torch's backward uses."
        ),
        sweep=_derivative_sweep,
        judge=_derivative_judge,
    )
)


# --------------------------------------------------------------------------------------
# L13: SELU's known limits (C13, not an experiment)
# --------------------------------------------------------------------------------------

_SELU_LIMITS = [
    [
        "init",
        "the (0, 1) fixed point needs LeCun normal weights, N(0, 1/fan_in) "
        "(Klambauer et al. 2017, Sec. 3); E8 shows it holds there",
    ],
    ["dropout", "standard dropout breaks the fixed point; the paper introduces alpha-dropout"],
    [
        "architecture",
        "the proof covers fully connected layers with normalised inputs; with convolutions, "
        "residual connections or BatchNorm the guarantee does not carry over",
    ],
    [
        "adoption",
        "far less used than ReLU/GELU in published architectures, so fewer tested recipes "
        "(the notes' 'new, less studied')",
    ],
]


def _selu_sweep(cfg: LabConfig) -> Sweep:
    return Sweep(
        numbers={"table": {"columns": ["topic", "what is known"], "rows": _SELU_LIMITS}},
        n_seeds=1,
    )


def _selu_judge(sweep: Sweep, seeds: SeedIndex) -> Judgement:
    return Judgement(
        {
            "C13": ClaimVerdict(
                "n/a",
                "no experiment: a statement about the literature, reported, not measured",
                "not an experiment: init, alpha-dropout and architecture limits (see E8)",
            )
        }
    )


SELU_NOTES = register(
    Experiment(
        id="L13",
        claims=("C13",),
        title="SELU's drawbacks (not an experiment)",
        question="What is known of SELU's limits?",
        method=(
            "C13 is not tested: the notes call SELU new and less studied. Known limits of its "
            "self-normalisation, from the paper itself; E8 tests it inside those limits."
        ),
        sweep=_selu_sweep,
        judge=_selu_judge,
    )
)
