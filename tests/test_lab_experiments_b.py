"""E6-E10 at tiny size, their building blocks on ground truth by construction, the runner
(results.json reproducible, timings kept apart) and the ``deadrelu lab`` command."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from deadrelu.lab.core import LabConfig
from deadrelu.lab.experiments import e7_elu, e8_selu, e9_cost, e10_born_dead

VERDICTS = {"supported", "not supported", "mixed", "n/a"}


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# E6 runs at tiny size and its rule is tested in test_lab_experiments_a.py (lab v2 shape).


# --------------------------------------------------------------------------------------
# E7: one-sided derivatives of ELU at 0 (only alpha = 1 is differentiable)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.1, 0.3, 1.0])
def test_elu_one_sided_derivatives(alpha: float) -> None:
    d = e7_elu.one_sided_derivatives(alpha)
    assert d["formula_right"] == 1.0
    assert d["formula_left"] == pytest.approx(alpha, abs=1e-9)
    assert d["fd_left"] == pytest.approx(alpha, rel=1e-5)
    assert d["fd_right"] == pytest.approx(1.0, rel=1e-9)
    assert d["at_zero"] == alpha  # torch's convention: the left limit
    assert (abs(d["formula_left"] - d["formula_right"]) < 1e-9) == (alpha == 1.0)


def test_steps_to_target_first_hit_and_censoring() -> None:
    acc = torch.tensor([[0.1, 0.5, 0.7, 0.9], [0.1, 0.2, 0.3, 0.4]])
    assert e7_elu._steps_to(acc, [0, 10, 20, 30], 0.6, censor=40) == [20.0, 40.0]


# --------------------------------------------------------------------------------------
# E8: signal propagation
# --------------------------------------------------------------------------------------


def test_propagate_one_layer_matches_direct_computation() -> None:
    means, variances = e8_selu.propagate("relu", depth=1, width=8, n=16, seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        x = torch.randn(16, 8, dtype=torch.float64)
        layer = torch.nn.Linear(8, 8, bias=False, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.normal_(0.0, 1 / math.sqrt(8))  # LeCun normal, by hand
            h = torch.relu(layer(x))
    assert means == [float(h.mean())]
    assert variances == [float(h.var(unbiased=False))]
    state = torch.get_rng_state()
    e8_selu.propagate("selu", depth=2, width=4, n=4, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched


def _e8_sweep(selu_mean: float, selu_var: float, auc_gain: float, n: int = 6) -> Any:
    from deadrelu.lab.core import Sweep

    def layers(last: float, k: int) -> list[float]:
        return [0.5] * (e8_selu.DEPTH - 1) + [last + 0.001 * (k % 3 - 1)]

    prop = {
        name: {
            "mean": [layers(selu_mean if name == "selu" else 0.3, k) for k in range(n)],
            "var": [layers(selu_var if name == "selu" else 1e-20, k) for k in range(n)],
        }
        for name in ("selu", "relu", "elu")
    }
    relu_auc = [0.5 + 0.01 * k for k in range(n)]
    selu_auc = [a + auc_gain + 0.002 * (k % 2) for k, a in enumerate(relu_auc)]
    training = {
        "n_test": 1000,
        "auc_test_acc": {"selu (lecun)": selu_auc, "relu (he)": relu_auc},
        "final_test_acc": {"selu (lecun)": selu_auc, "relu (he)": relu_auc},
    }
    return Sweep({"propagation": {"per_layer": prop}, "training": training}, n_seeds=n)


@pytest.mark.parametrize(
    ("mean", "var", "gain", "verdict"),
    [
        (0.0, 1.0, 0.05, "supported"),  # self-normalised and faster
        (0.5, 0.1, -0.05, "not supported"),  # neither
        (0.0, 1.0, -0.05, "mixed"),  # self-normalised, but slower
    ],
)
def test_e8_judge_on_constructed_numbers(
    mean: float, var: float, gain: float, verdict: str
) -> None:
    sweep = _e8_sweep(mean, var, gain)
    assert e8_selu.judge(sweep, None).claims["C12"].verdict == verdict
    # a resample of the seeds uses only those seeds: seeds 0 and 1 only, still decided
    assert e8_selu.judge(sweep, [0, 1, 0, 1, 1, 0]).claims["C12"].verdict == verdict


def test_e8_and_e9_run_in_the_new_shape_at_tiny_size(tmp_path: Path) -> None:
    from deadrelu.lab.runner import run_experiment

    cfg = LabConfig(preset="tiny", out=tmp_path)
    for exp in (e8_selu.EXPERIMENT, e9_cost.EXPERIMENT):
        r = run_experiment(exp, cfg)
        assert r.style == "v2" and set(r.claim_verdicts) == set(exp.claims)
        rec = r.claim_verdicts[exp.claims[0]]
        assert rec["verdict"] in VERDICTS and rec["preset"] == "tiny"
        assert rec["n_seeds"] == r.n_seeds and rec["stability"]["resamples"] == exp.resamples
        assert "{" not in r.method  # every placeholder filled from the numbers
        for f in r.figures:
            assert (cfg.out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.claim_verdicts["C11"]["source"] == "timings"
    assert r.claim_verdicts["C11"]["axis"] == "rounds"  # E9 resamples timing rounds
    assert "seconds_per_element" in r.timings and "seconds_per_element" not in r.numbers


def test_relu_second_moment_halves_under_lecun_init() -> None:
    # E[relu(z)^2] = Var(z) / 2 for symmetric z: after 10 layers the second moment is
    # 2^-10 in expectation (LeCun init does not compensate the halving; He init would keep
    # it near 1). The weights are shared by all inputs, so one draw fluctuates by a factor
    # of about 1.5: the band is a factor 2^1.5 either side.
    for seed in range(3):
        means, variances = e8_selu.propagate("relu", depth=10, width=512, n=256, seed=seed)
        second = variances[-1] + means[-1] ** 2
        assert 2.0**-11.5 < second < 2.0**-8.5


# --------------------------------------------------------------------------------------
# E9: timings stay out of the reproducible numbers
# --------------------------------------------------------------------------------------


def test_time_activations_shape() -> None:
    t = e9_cost.time_activations(("relu", "elu"), n=1000, rounds=2, iters=1)
    assert set(t) == {"relu", "elu"}
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in t.values())


def _e9_sweep(elu_factor: float, rounds: int = 9) -> Any:
    from deadrelu.lab.core import Sweep

    relu = [1e-9 * (1 + 0.3 * (r % 3)) for r in range(rounds)]  # a noisy machine
    per = {name: list(relu) for name in e9_cost.ACTIVATIONS}
    per["elu"] = [t * elu_factor * (1 + 0.02 * (r % 2)) for r, t in enumerate(relu)]
    return Sweep({"setting": {}}, n_seeds=rounds, timings={"seconds_per_element": per})


def test_e9_judge_reads_the_timings_per_round() -> None:
    # ELU 3x ReLU in every round (whatever the machine's speed): more expensive
    assert e9_cost.judge(_e9_sweep(3.0), None).claims["C11"].verdict == "supported"
    # ELU as fast as ReLU: the ratio's interval lies below the 1.05 bound
    assert e9_cost.judge(_e9_sweep(0.98), None).claims["C11"].verdict == "not supported"
    assert e9_cost.EXPERIMENT.verdict_source == "timings"


# --------------------------------------------------------------------------------------
# E10: born-dead Monte Carlo
# --------------------------------------------------------------------------------------


def test_born_dead_rates_are_monotone_in_depth_and_zero_at_depth_one() -> None:
    for init in ("he", "rai"):
        counts = e10_born_dead.born_dead_by_depth(2, 12, nets=200, inputs=32, init=init, seed=1)
        assert len(counts) == 12
        assert all(b >= a for a, b in itertools.pairwise(counts))
        if init == "he":
            # zero bias, inputs of both signs: no first layer is dead on every input
            assert counts[0] == 0
            assert counts[-1] > 0.3 * 200


def test_born_dead_width_one_matches_the_closed_form() -> None:
    # Width 1, zero biases, input dim 1: layer 1 is alive (the grid holds both signs of x);
    # each later layer relu(w h) with h >= 0 not all 0 dies exactly when w < 0, probability
    # 1/2, independently. So P(dead by depth L) = 1 - 2^-(L - 1).
    nets = 4000
    counts = e10_born_dead.born_dead_by_depth(1, 6, nets=nets, inputs=16, init="he", seed=5)
    for depth, count in enumerate(counts, start=1):
        rate = count / nets
        p = 1 - 2.0 ** -(depth - 1)
        assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / nets) + 1e-12


def test_born_dead_last_depth_equals_the_library_rate() -> None:
    from deadrelu.born_dead import born_dead_rate

    counts = e10_born_dead.born_dead_by_depth(3, 8, nets=300, inputs=32, init="rai", seed=2)
    lib = born_dead_rate(8, 3, init="rai", trials=300, seed=2, d_in=1, n_inputs=32)
    assert counts[-1] == lib.dead


# The runner and the `deadrelu lab` command are tested in tests/test_lab_runner.py.
