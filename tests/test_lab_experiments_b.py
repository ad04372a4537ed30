"""E6-E10 at tiny size, their building blocks on ground truth by construction, the runner
(results.json reproducible, timings kept apart) and the ``deadrelu lab`` command."""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from deadrelu.lab.core import EXPERIMENTS, ExperimentResult, LabConfig
from deadrelu.lab.experiments import e7_elu, e8_selu, e9_cost, e10_born_dead
from deadrelu.lab.runner import (
    SCHEMA,
    claims_table,
    live_checks,
    resolve_only,
    run_lab,
    to_jsonable,
)

VERDICTS = {"supported", "not supported", "mixed", "n/a"}


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _check_result(r: ExperimentResult, cfg: LabConfig, exp_id: str) -> None:
    assert r.id == exp_id
    assert r.claims == EXPERIMENTS[exp_id].claims
    assert r.verdict in VERDICTS
    assert r.question and r.method and r.verdict_rule and r.summary and r.caveats
    json.dumps(to_jsonable(r.to_dict()), allow_nan=False)
    assert r.figures
    for f in r.figures:
        assert (cfg.out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("exp_id", ["E6", "E7", "E8", "E9", "E10"])
def test_experiment_runs_at_tiny_size(exp_id: str, tmp_path: Path) -> None:
    cfg = LabConfig(preset="tiny", out=tmp_path)
    _check_result(EXPERIMENTS[exp_id].run(cfg), cfg, exp_id)


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


# --------------------------------------------------------------------------------------
# E10: born-dead Monte Carlo
# --------------------------------------------------------------------------------------


def test_born_dead_rates_are_monotone_in_depth_and_zero_at_depth_one() -> None:
    for init in ("he", "rai"):
        rates = e10_born_dead.born_dead_by_depth(2, 12, nets=200, inputs=32, init=init, seed=1)
        assert len(rates) == 12
        assert all(b >= a for a, b in itertools.pairwise(rates))
        if init == "he":
            # zero bias, inputs of both signs: no first layer is dead on every input
            assert rates[0] == 0.0
            assert rates[-1] > 0.3


def test_born_dead_width_one_matches_the_closed_form() -> None:
    # Width 1, zero biases, input dim 1: layer 1 is alive (the grid holds both signs of x);
    # each later layer relu(w h) with h >= 0 not all 0 dies exactly when w < 0, probability
    # 1/2, independently. So P(dead by depth L) = 1 - 2^-(L - 1).
    nets = 4000
    rates = e10_born_dead.born_dead_by_depth(1, 6, nets=nets, inputs=16, init="he", seed=5)
    for depth, rate in enumerate(rates, start=1):
        p = 1 - 2.0 ** -(depth - 1)
        assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / nets) + 1e-12


def test_born_dead_last_depth_equals_the_library_rate() -> None:
    from deadrelu.born_dead import born_dead_rate

    rates = e10_born_dead.born_dead_by_depth(3, 8, nets=300, inputs=32, init="rai", seed=2)
    lib = born_dead_rate(8, 3, init="rai", trials=300, seed=2, d_in=1, n_inputs=32)
    assert rates[-1] == lib.rate


# --------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------


def test_run_lab_is_reproducible_and_keeps_timings_apart(tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        cfg = LabConfig(preset="tiny", out=tmp_path / name)
        results = run_lab(cfg, only="E10,e9", progress=False)
        assert [r.id for r in results] == ["E9", "E10"]
        outs.append(cfg.out)
    a = (outs[0] / "results.json").read_text()
    b = (outs[1] / "results.json").read_text()
    assert a.replace(str(outs[0]), "OUT") == b.replace(str(outs[1]), "OUT")
    doc = json.loads(a)
    assert doc["schema"] == SCHEMA
    assert doc["order"] == ["E9", "E10"]
    assert set(doc["live_checks"]) == {"L1", "L13", "L14"}
    e9 = doc["experiments"]["E9"]
    assert "timings" not in e9
    assert e9["verdict"] == "n/a" and "timings.json" in e9["summary"]
    assert e9["numbers"]["verdict_source"] == "timings"
    assert doc["experiments"]["E10"]["figures"] == ["figures/e10_born_dead.png"]
    timings = json.loads((outs[0] / "timings.json").read_text())
    assert timings["experiments"]["E9"]["verdict"] in VERDICTS
    assert "ratio_to_relu" in timings["experiments"]["E9"]["timings"]
    assert (outs[0] / "index.html").is_file()


def test_to_jsonable() -> None:
    import numpy as np

    value = {
        "t": torch.tensor([1.0, float("nan")]),
        "a": np.arange(3),
        "s": np.float32(0.5),
        "p": Path("x/y"),
        1: (float("inf"), None, True),
    }
    out = to_jsonable(value)
    assert out == {"t": [1.0, None], "a": [0, 1, 2], "s": 0.5, "p": "x/y", "1": [None, None, True]}
    json.dumps(out, allow_nan=False)


def test_resolve_only_errors_name_the_known_ids() -> None:
    assert resolve_only("e7, E6") == ["E6", "E7"]
    with pytest.raises(ValueError, match=r"unknown experiment id\(s\) E99; known: .*E6"):
        resolve_only("E6,E99")
    with pytest.raises(ValueError, match="empty"):
        resolve_only(" , ")


def test_failing_experiment_is_recorded_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    def boom(cfg: LabConfig) -> ExperimentResult:
        raise RuntimeError("kaputt")

    monkeypatch.setitem(EXPERIMENTS, "E9", replace(EXPERIMENTS["E9"], run=boom))
    cfg = LabConfig(preset="tiny", out=tmp_path)
    results = run_lab(cfg, only="E9", progress=False)
    assert results[0].verdict == "n/a"
    assert "kaputt" in results[0].summary
    doc = json.loads((tmp_path / "results.json").read_text())
    assert "kaputt" in doc["experiments"]["E9"]["numbers"]["error"]


def test_live_checks_find_the_dead_units_and_match_autograd() -> None:
    panels = {p["id"]: p for p in live_checks()}
    assert panels["L1"]["numbers"]["dead_found"] == [2, 4]
    assert panels["L1"]["numbers"]["dead_found_scan"] == [2, 4]
    assert panels["L1"]["verdict"] == "supported"
    assert panels["L14"]["verdict"] == "supported"
    assert panels["L14"]["numbers"]["max_abs_diff"] <= 1e-12
    assert panels["L13"]["verdict"] == "n/a"


def test_claims_table_lists_every_claim_row() -> None:
    from rich.console import Console

    r = ExperimentResult(
        id="E7",
        claims=("C11",),
        title="t",
        question="q",
        method="m",
        numbers={},
        verdict="mixed",
        verdict_rule="r",
        summary="key 42",
    )
    table = claims_table([r], live_checks())
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    for claim in ("C1", "C2", "C11", "C13", "C14"):
        assert f" {claim} " in text
    assert "key 42" in text and "mixed" in text


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    from deadrelu.lab.command import add_lab_parser

    parser = argparse.ArgumentParser(prog="deadrelu")
    add_lab_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_command_defaults() -> None:
    args = _parse(["lab"])
    assert (args.preset, args.only, args.seeds, args.out, args.device) == (
        "quick",
        None,
        None,
        Path("report"),
        "cpu",
    )


def test_command_rejects_unknown_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["lab", "--only", "E6,E42", "--out", "unused"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "E42" in err and "known" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_command_rejects_cuda_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["lab", "--device", "cuda", "--out", "unused"])
    assert args.func(args) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_command_runs_and_prints_the_claims_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse(
        ["lab", "--preset", "tiny", "--only", "E10", "--seeds", "2", "--out", str(tmp_path)]
    )
    args.no_progress = True
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "C15" in out and "E10" in out
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["config"]["n_seeds"] == 2
    assert doc["experiments"]["E10"]["numbers"]["setting"]["seeds"] == [0, 1]
