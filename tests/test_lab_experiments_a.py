"""Experiments E1, E2, E4, E5 and E6 (lab v2 shape): each runs at the tiny size with honest
intervals, and each verdict rule gives the right answer on constructed numbers."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from deadrelu.lab.core import REGISTRY, ExperimentResult, LabConfig, Sweep, register
from deadrelu.lab.experiments import (
    e1_learning_rate,
    e2_bias,
    e4_remedies,
    e5_leaky_slope,
    e6_prelu,
)
from deadrelu.lab.runner import run_experiment

VERDICTS = {"supported", "not supported", "mixed", "n/a"}
MINE = ("E1", "E2", "E4", "E5", "E6")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registry_holds_the_experiments_once() -> None:
    for exp_id in MINE:
        assert REGISTRY[exp_id].id == exp_id
    ids = [i for i in REGISTRY if i.startswith("E")]
    assert ids == sorted(ids, key=lambda s: int(s[1:]))
    with pytest.raises(ValueError, match="already registered"):
        register(
            e1_learning_rate.EXPERIMENT.__class__(
                **{**e1_learning_rate.EXPERIMENT.__dict__, "title": "again"}
            )
        )


# --------------------------------------------------------------------------------------
# each experiment at the tiny size
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("lab")
    cfg = LabConfig(preset="tiny", out=out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"cfg": cfg, **{k: run_experiment(REGISTRY[k], cfg) for k in MINE}}
    finally:
        torch.set_num_threads(threads)


def _intervals(x: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``{"mean", "lo", "hi"}`` dict inside ``x``, with its path."""
    if isinstance(x, dict):
        if {"mean", "lo", "hi"} <= set(x):
            yield path, x
        for k, v in x.items():
            yield from _intervals(v, f"{path}/{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _intervals(v, f"{path}/{i}")


PROPORTIONS = ("dead", "never_active", "stuck", "bias_share", "revived", "diverged")


@pytest.mark.parametrize("exp_id", MINE)
def test_experiment_runs_tiny(tiny_results: dict[str, Any], exp_id: str) -> None:
    res: ExperimentResult = tiny_results[exp_id]
    cfg: LabConfig = tiny_results["cfg"]
    assert res.id == exp_id and res.claims == REGISTRY[exp_id].claims
    assert res.verdict in VERDICTS
    assert res.summary and res.question and res.method and res.caveats
    assert "{" not in res.method  # every placeholder was filled from the numbers
    assert set(res.claim_verdicts) == set(res.claims)
    assert all(r["verdict"] in VERDICTS for r in res.claim_verdicts.values())
    for fig in res.figures:
        assert (cfg.out / fig).read_bytes()[:4] == b"\x89PNG"
    assert res.figures
    json.dumps(res.to_dict(include_timings=False), allow_nan=False)
    # honest intervals: never of zero width, proportions inside [0, 1]
    found = list(_intervals(res.derived)) + list(
        _intervals({c: r["evidence"] for c, r in res.claim_verdicts.items()})
    )
    assert found
    for path, ci in found:
        if ci["lo"] is not None and ci["hi"] is not None:
            assert ci["lo"] < ci["hi"], f"{exp_id}{path}: zero-width interval {ci}"
            assert ci["lo"] <= ci["mean"] <= ci["hi"], f"{exp_id}{path}: {ci}"
        if any(f"/{p}" in path for p in PROPORTIONS) and "reduction" not in path:
            assert ci["lo"] is None or ci["lo"] >= 0.0, f"{exp_id}{path}: {ci}"
            assert ci["hi"] is None or ci["hi"] <= 1.0, f"{exp_id}{path}: {ci}"


@pytest.mark.parametrize("exp_id", MINE)
def test_judge_uses_only_the_resampled_seeds(tiny_results: dict[str, Any], exp_id: str) -> None:
    exp = REGISTRY[exp_id]
    res: ExperimentResult = tiny_results[exp_id]
    assert res.n_seeds == 2
    sweep = Sweep(res.numbers, res.n_seeds)

    def derived(seeds: Any) -> str:
        return json.dumps(exp.judge(sweep, seeds).derived, sort_keys=True)

    assert derived([0, 1]) == derived(None)  # every seed once = None
    # seed 0 alone and seed 1 alone give different numbers: the seeds are really picked
    assert derived([0, 0]) != derived([1, 1])
    verdicts = {c: v.verdict for c, v in exp.judge(sweep, [1, 0]).claims.items()}
    assert verdicts == {c: r["verdict"] for c, r in res.claim_verdicts.items()}


def test_same_config_same_numbers(tiny_results: dict[str, Any], tmp_path: Path) -> None:
    again = run_experiment(REGISTRY["E5"], LabConfig(preset="tiny", out=tmp_path))
    assert json.dumps(again.numbers, sort_keys=True) == json.dumps(
        tiny_results["E5"].numbers, sort_keys=True
    )
    assert again.claim_verdicts == tiny_results["E5"].claim_verdicts


def test_e4_has_every_arm_and_keeps_slope_nesting(tiny_results: dict[str, Any]) -> None:
    numbers = tiny_results["E4"].numbers
    assert list(numbers["settings"]) == ["high lr", "negative update"]
    st = numbers["settings"]["high lr"]
    assert set(st["activations"]) == set(e4_remedies.ACT_ARMS)
    assert {"relu", "relu, low lr", "relu, bias 0.01", "relu, RAI", "relu, ReDo"} == set(
        st["remedies"]
    )
    assert "relu, low lr" not in numbers["settings"]["negative update"]["remedies"]
    widths = numbers["widths"]
    for label, n_slopes in (("prelu", widths[1:-1]), ("prelu (shared)", [1, 1])):
        slopes = st["activations"][label][str(st["grid"][0])]["learned_slopes"]
        assert len(slopes) == 2  # [seed][layer][unit]
        assert [len(layer) for layer in slopes[0]] == list(n_slopes)
    assert set(numbers["cnn"]["activations"]) == set(e4_remedies.CNN_ACTS)


# --------------------------------------------------------------------------------------
# verdict rules on constructed numbers
# --------------------------------------------------------------------------------------

N = 5


def _layers(*per_layer: list[float]) -> list[list[float]]:
    """Per-seed lists of per-layer values from one list per layer."""
    return [list(v) for v in zip(*per_layer, strict=True)]


def _e1_row(dead2: list[float], acc: list[float], diverged: bool = False) -> dict[str, Any]:
    return {
        "diverged": [diverged] * N,
        "dead": [None] * N if diverged else _layers([0.0] * N, dead2),
        "stuck": [None] * N if diverged else _layers([0.0] * N, dead2),
        "acc": acc,
    }


def _e1_sweep(dead_high: list[float], acc_low: list[float]) -> Sweep:
    acc = [0.60, 0.61, 0.59, 0.60, 0.62]
    relu = {
        "0.01": _e1_row([0.0] * N, acc_low),
        "0.1": _e1_row([0.0] * N, acc),
        "1.0": _e1_row(dead_high, acc),
        "10.0": _e1_row([0.0] * N, [0.1] * N, diverged=True),
    }
    cnn = {"0.1": _e1_row([0.0] * N, acc), "10.0": _e1_row(dead_high, acc)}
    numbers = {
        "lrs": [0.01, 0.1, 1.0, 10.0],
        "widths": [40, 50, 50, 10],
        "n_test": 1000,
        "mlp": {"relu": relu},
        "cnn_lrs": [0.1, 10.0],
        "cnn_widths": [40, 8, 8, 10],
        "cnn": {"relu": cnn},
    }
    return Sweep(numbers, N)


def test_e1_rules_per_layer() -> None:
    high = [0.30, 0.32, 0.28, 0.30, 0.34]
    j = e1_learning_rate.judge(_e1_sweep(high, [0.60, 0.61, 0.59, 0.60, 0.62]), None)
    assert j.claims["C3"].verdict == "supported"
    ev = j.claims["C3"].evidence["mlp"]
    assert ev["lr_high"] == 1.0 and ev["lr_low"] == 0.01  # 10.0 diverged: not "high"
    assert [L["verdict"] for L in ev["layers"]] == ["not supported", "supported"]
    assert "layer 2" in j.claims["C3"].summary
    # C6: lr 0.1 is the largest safe rate and as accurate as the best: the cost's interval
    # is honest even though every seed gives the same cost (0): never [0, 0]
    c6 = j.claims["C6"]
    assert c6.verdict == "supported" and c6.evidence["lr_safe"] == 0.1
    cost = c6.evidence["acc_cost"]
    assert cost["mean"] == 0 and cost["lo"] < 0 < cost["hi"] < e1_learning_rate.MAX_ACC_COST
    # nothing dies: C3 and C6 not supported
    j = e1_learning_rate.judge(_e1_sweep([0.0] * N, [0.6] * N), None)
    assert j.claims["C3"].verdict == "not supported"
    assert j.claims["C6"].verdict == "not supported"


def test_e1_c6_costs_accuracy_is_mixed() -> None:
    high = [0.30, 0.32, 0.28, 0.30, 0.34]
    sw = _e1_sweep(high, [0.50, 0.52, 0.49, 0.51, 0.50])
    sw.numbers["mlp"]["relu"]["0.1"]["dead"] = _layers([0.0] * N, [0.02] * N)  # not safe
    j = e1_learning_rate.judge(sw, None)
    assert j.claims["C6"].evidence["lr_safe"] == 0.01
    assert j.claims["C6"].verdict == "mixed"  # safe, but 10 points less accurate


def _causes(bias: int, weights: int) -> list[Any]:
    none = dict.fromkeys(e2_bias.CAUSES, 0)
    return [[dict(none), {**none, "bias": bias, "weights": weights}] for _ in range(N)]


def _e2_sweep(effect: bool, bias: int = 10, weights: int = 0) -> Sweep:
    dead = [0.30, 0.32, 0.28, 0.30, 0.34] if effect else [0.0] * N
    zeros = _layers([0.0] * N, [0.0] * N)
    killed = _layers([0.0] * N, dead)
    row = {"acc": [0.6] * N, "diverged": [False] * N}
    numbers = {
        "widths": [40, 50, 50, 10],
        "n_test": 1000,
        "kick_step": 10,
        "biases": [-3.0, 0.0],
        "kicks": [0.0, -4.0],
        "bias_init": {
            "-3.0": {**row, "dead_init": killed, "dead_end": killed, "causes": _causes(15, 0)},
            "0.0": {**row, "dead_init": zeros, "dead_end": zeros, "causes": None},
        },
        "bias_kick": {
            "0.0": {
                **row,
                "dead_before": zeros,
                "dead_after_kick": zeros,
                "dead_end": zeros,
                "causes": None,
            },
            "-4.0": {
                **row,
                "dead_before": zeros,
                "dead_after_kick": killed,
                "dead_end": killed,
                "causes": _causes(bias, weights),
            },
        },
    }
    return Sweep(numbers, N)


def test_e2_rules() -> None:
    j = e2_bias.judge(_e2_sweep(True), None)
    assert j.claims["C4"].verdict == "supported"
    ev = j.claims["C4"].evidence
    assert [L["verdict"] for L in ev["update"]["layers"]] == ["not supported", "supported"]
    assert ev["attribution"]["all"]["counts"]["bias"] == 10 * N
    assert ev["attribution"]["all"]["bias_share"]["lo"] > 0.5
    assert set(j.claims) == {"C4"}  # C7 moved to E12
    nothing = e2_bias.judge(_e2_sweep(False, bias=0), None).claims["C4"]  # no dead unit
    assert nothing.verdict == "not supported"
    assert nothing.evidence["attribution_verdict"] == "n/a"
    # the units die, but the weights keep them dead: attribution contradicts the claim
    j = e2_bias.judge(_e2_sweep(True, bias=0, weights=10), None)
    assert j.claims["C4"].evidence["attribution_verdict"] == "not supported"
    assert j.claims["C4"].verdict == "mixed"


def test_e2_causes_from_explain_on_units_killed_by_construction() -> None:
    from torch import nn

    from deadrelu.lab.data import Dataset, load
    from deadrelu.lab.trainer import MLP, Member, TrainConfig, train_batched

    d = load("synthetic", 0)
    data = Dataset(d.name, d.x_train[:400], d.y_train[:400], d.x_test[:200], d.y_test[:200], 10)

    def kill(model: nn.Module) -> None:
        assert isinstance(model, MLP)
        with torch.no_grad():
            model.linear_layers()[0].bias[[3, 7]] = -1000.0  # the bias alone kills these
            model.linear_layers()[0].weight[5].zero_()  # w . x = 0 <= 0 with bias 0
            model.linear_layers()[0].bias[5] = 0.0

    tc = TrainConfig(widths=(40, 16, 16, 10), steps=1, batch_size=50, eval_every=1)
    res = train_batched([Member(seed=0, lr=0.0, init_fn=kill)], tc, data)
    causes = e2_bias._causes(res, 0, data, None)
    assert causes[0]["bias"] == 2 and causes[0]["weights"] == 1 and causes[0]["both"] == 0
    assert sum(causes[1].values()) == round(float(res.dead_frac[0, -1, 1]) * 16)


def _e4_rows(never: list[float], acc: list[float], diverged: bool = False) -> dict[str, Any]:
    return {
        "diverged": [diverged] * N,
        "never_active": [None] * N if diverged else _layers([0.0] * N, never),
        "acc": [None] * N if diverged else acc,
    }


def _e4_sweep(var_never: list[float], var_acc: list[float]) -> Sweep:
    relu_never = [0.30, 0.32, 0.28, 0.30, 0.34]
    acc = [0.60, 0.61, 0.59, 0.60, 0.62]
    grid = [0.3, 1.0, 3.0]

    def acts(variant_div_at_top: bool) -> dict[str, Any]:
        out = {
            "relu": {
                "0.3": _e4_rows([0.0] * N, acc),
                "1.0": _e4_rows([0.1] * N, acc),
                "3.0": _e4_rows(relu_never, acc),
            }
        }
        for v in (*e4_remedies.VARIANTS, "prelu (shared)"):
            out[v] = {
                "0.3": _e4_rows([0.0] * N, acc),
                "1.0": _e4_rows(var_never, var_acc),
                "3.0": _e4_rows(var_never, var_acc, diverged=variant_div_at_top),
            }
        return out

    rem = {"relu": _e4_rows(relu_never, acc), "relu, ReDo": _e4_rows([0.0] * N, acc)}
    setting = {"grid": grid, "activations": acts(True), "remedies": rem}
    return Sweep(
        {
            "widths": [40, 50, 50, 10],
            "n_test": 1000,
            "settings": {"a": setting, "b": setting},
            "cnn": {"widths": [40, 8, 8, 10], "grid": grid, "activations": acts(False)},
        },
        N,
    )


def test_e4_rules_each_activation_at_its_own_stable_rate() -> None:
    acc = [0.60, 0.61, 0.59, 0.60, 0.62]
    j = e4_remedies.judge(_e4_sweep([0.0] * N, acc), None)
    assert j.claims["C8"].verdict == "supported"
    part = j.claims["C8"].evidence["a: leaky_relu"]
    # the variants diverge at 3.0, so they are compared at 1.0 and ReLU at 3.0
    assert part["lr_relu"] == 3.0 and part["lr_variant"] == 1.0
    assert part["dying"] == "supported" and part["accuracy"] == "supported"
    assert j.derived["settings"]["a"]["activations"]["elu"]["diverged"]["3.0"]["k"] == N
    assert j.claims["C16"].verdict == "supported"
    # never-active units count for every activation: no variant wins by construction
    j = e4_remedies.judge(_e4_sweep([0.40, 0.42, 0.38, 0.40, 0.44], acc), None)
    assert j.claims["C8"].evidence["a: leaky_relu"]["dying"] == "not supported"
    assert j.claims["C8"].verdict == "not supported"
    same = e4_remedies.judge(_e4_sweep([0.30, 0.32, 0.28, 0.30, 0.34], acc), None)
    assert same.claims["C8"].evidence["a: leaky_relu"]["dying"] != "supported"
    # dies less but 10 points less accurate: the accuracy part fails
    j = e4_remedies.judge(_e4_sweep([0.0] * N, [a - 0.1 for a in acc]), None)
    assert j.claims["C8"].evidence["a: elu"]["accuracy"] == "not supported"
    assert j.claims["C8"].verdict == "not supported"
    # dies less, accuracy interval straddles the margin: mixed
    noisy = [a - 0.02 + e for a, e in zip(acc, [0.03, -0.03, 0.02, -0.02, 0.0], strict=True)]
    assert e4_remedies.judge(_e4_sweep([0.0] * N, noisy), None).claims["C8"].verdict == "mixed"


def test_e5_why_001_compares_against_every_slope_with_holm() -> None:
    base = [0.60, 0.61, 0.59, 0.60, 0.62]
    noise = [0.003, -0.002, 0.001, -0.003, 0.001]
    acc = {s: [a + e for a, e in zip(base, noise, strict=True)] for s in e5_leaky_slope.SLOPES}
    acc[0.01] = list(base)
    w = e5_leaky_slope.why_001(acc, 1000)
    assert w["verdict"] == "supported" and w["beat_0.01"] == []
    # 0.2 beats 0.01 by 5 points on every seed: not supported, and 0.2 is named
    acc[0.2] = [a + 0.05 + e for a, e in zip(base, noise, strict=True)]
    w = e5_leaky_slope.why_001(acc, 1000)
    assert w["verdict"] == "not supported" and w["beat_0.01"] == [0.2]
    # Holm: the adjusted p-value is at least the raw one, and the family is every slope
    assert all(r["p_holm"] >= r["p"] for r in w["slopes"].values())
    assert set(w["slopes"]) == {str(s) for s in e5_leaky_slope.SLOPES if s != 0.01}


def _e5_sweep(never0: list[float]) -> Sweep:
    rows = {}
    for lr in (0.3, 2.0):
        for s in e5_leaky_slope.SLOPES:
            never = never0 if s == 0.0 else [0.0] * N
            rows[f"{lr}/{s}"] = {
                "lr": lr,
                "slope": s,
                "diverged": [False] * N,
                "never_active": _layers([0.0] * N, never),
                "revived": [[4, 1]] * N,
                "acc": [0.60, 0.61, 0.59, 0.60, 0.62],
                "mean_act": _layers([0.3] * N, [0.2, 0.21, 0.19, 0.2, 0.2]),
            }
    return Sweep(
        {
            "widths": [40, 50, 50, 10],
            "n_test": 1000,
            "lrs": [0.3, 2.0],
            "slopes": list(e5_leaky_slope.SLOPES),
            "rows": rows,
        },
        N,
    )


def test_e5_rules() -> None:
    j = e5_leaky_slope.judge(_e5_sweep([0.30, 0.32, 0.28, 0.30, 0.34]), None)
    # every slope ties with 0.01 within the simultaneous interval, and 0.01 dies less
    assert j.claims["C9"].evidence["no_dying"]["verdict"] == "supported"
    assert j.claims["C9"].verdict == "supported"
    j = e5_leaky_slope.judge(_e5_sweep([0.0] * N), None)
    assert j.claims["C9"].evidence["no_dying"]["verdict"] == "not supported"
    assert j.claims["C9"].verdict == "mixed"


def _e6_sweep(gain: float) -> Sweep:
    base = [0.60, 0.61, 0.59, 0.60, 0.62]
    noise = [0.002, -0.001, 0.001, -0.002, 0.0]
    arms = {}
    for label in e6_prelu.ARMS:
        g = gain if label == e6_prelu.MAIN else 0.0
        arms[label] = {
            "acc": [a + g + e for a, e in zip(base, noise, strict=True)],
            "diverged": [False] * N,
            "never_active": _layers([0.0] * N, [0.0] * N),
        }
        if "prelu" in label:
            k = 3 if label == e6_prelu.MAIN else 1
            arms[label]["learned_slopes"] = [[[0.2] * k, [-0.1] * k] for _ in range(N)]
    arms[e6_prelu.LEAKY]["acc"] = list(base)
    return Sweep({"widths": [40, 3, 3, 10], "n_test": 1000, "arms": arms}, N)


def test_e6_rules_name_the_per_unit_prelu() -> None:
    j = e6_prelu.judge(_e6_sweep(0.03), None)
    c = j.claims["C10"]
    assert c.verdict == "supported" and "per unit" in c.rule and "per unit" in c.summary
    slopes = j.derived[e6_prelu.MAIN]["learned_slopes"]
    assert [s["count"] for s in slopes] == [3 * N, 3 * N]
    assert slopes[1]["negative"] == 1.0 and slopes[0]["mean"] == pytest.approx(0.2)
    assert e6_prelu.judge(_e6_sweep(0.0), None).claims["C10"].verdict == "not supported"
    assert math.isfinite(c.evidence["prelu_per_unit_minus_leaky001"]["lo"])


# --------------------------------------------------------------------------------------
# ReDo through the sequential trainer's hook
# --------------------------------------------------------------------------------------


def test_redo_hook_recycles_units_killed_by_construction() -> None:
    from torch import nn

    from deadrelu.lab.data import Dataset, load
    from deadrelu.lab.trainer import MLP, Member, TrainConfig, train_sequential

    d = load("synthetic", 0)
    data = Dataset(d.name, d.x_train[:400], d.y_train[:400], d.x_test[:200], d.y_test[:200], 10)

    def kill(model: nn.Module) -> None:
        assert isinstance(model, MLP)
        with torch.no_grad():
            model.linear_layers()[0].bias[[3, 7]] = -1000.0

    tc = TrainConfig(
        widths=(40, 16, 16, 10), steps=6, batch_size=50, eval_every=3, record_masks=True
    )
    member = Member(seed=0, lr=0.05, init_fn=kill)
    plain = train_sequential([member], tc, data)
    assert plain.dead_masks[0][-1, 0, [3, 7]].all()  # without ReDo they stay dead
    hook = e4_remedies.redo_hook(data.x_train, every=2, last=4, tau=0.0)
    cured = train_sequential([member], tc, data, on_step=hook)
    first = cured.dead_masks[0]  # (T, 1, 16)
    assert torch.nonzero(first[0, 0]).flatten().tolist() == [3, 7]  # dead at init
    assert not first[-1, 0, [3, 7]].any()  # recycled at step 2: alive afterwards
    # their bias was reset from -1000 to 0 (then trained a few steps)
    assert cured.state["linears.0.bias"][0, [3, 7]].abs().max() < 1.0
