"""The lab's core contract and experiments E1-E5: each runs at the tiny size, and each
verdict rule gives the right answer on constructed numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from deadrelu.lab.core import (
    EXPERIMENTS,
    ExperimentResult,
    LabConfig,
    ci_dict,
    experiment,
    new_figure,
    rounded,
    save_figure,
)
from deadrelu.lab.experiments import (
    e1_learning_rate,
    e2_bias,
    e4_remedies,
    e5_leaky_slope,
)

VERDICTS = {"supported", "not supported", "mixed", "n/a"}

# --------------------------------------------------------------------------------------
# core
# --------------------------------------------------------------------------------------


def test_config_sizes_and_seeds() -> None:
    assert LabConfig(preset="tiny").n_seeds == 2
    assert LabConfig(preset="full", seeds=3).n_seeds == 3
    assert LabConfig(preset="quick").size(tiny=1, quick=2, full=3) == 2
    assert isinstance(LabConfig(out="x").out, Path)
    with pytest.raises(ValueError, match="unknown preset"):
        LabConfig(preset="huge")
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        LabConfig(seeds=0)


def test_registry_is_ordered_and_refuses_duplicates() -> None:
    ids = list(EXPERIMENTS)
    assert ids[:5] == ["E1", "E2", "E3", "E4", "E5"]
    assert ids == sorted(ids, key=lambda s: int(s[1:]))
    with pytest.raises(ValueError, match="already registered"):
        experiment("E1", ("C3",), "again")(lambda cfg: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="look like 'E7'"):
        experiment("X1", (), "bad")


def test_save_figure_is_byte_reproducible(tmp_path: Path) -> None:
    cfg = LabConfig(preset="tiny", out=tmp_path)
    blobs = []
    for name in ("a", "b"):
        fig, axes = new_figure()
        axes[0, 0].plot([0, 1, 2], [1, 0, 1])
        rel = save_figure(fig, cfg, name)
        assert rel == f"figures/{name}.png"
        blobs.append((tmp_path / rel).read_bytes())
    assert blobs[0][:8] == b"\x89PNG\r\n\x1a\n"
    assert blobs[0] == blobs[1]


def test_rounded_and_ci_dict() -> None:
    assert rounded(1 / 3) == 0.333333
    assert rounded(float("nan")) is None
    assert ci_dict([0.5, 0.5]) == {"mean": 0.5, "lo": 0.5, "hi": 0.5, "n": 2}
    one = ci_dict([0.2])
    assert one["mean"] == 0.2 and one["lo"] is None and one["hi"] is None


# --------------------------------------------------------------------------------------
# each experiment at the tiny size
# --------------------------------------------------------------------------------------

MODULES = {
    "E1": e1_learning_rate,
    "E2": e2_bias,
    "E4": e4_remedies,
    "E5": e5_leaky_slope,
}


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("lab")
    cfg = LabConfig(preset="tiny", out=out)
    return {"cfg": cfg, **{k: EXPERIMENTS[k].run(cfg) for k in MODULES}}


@pytest.mark.parametrize("exp_id", list(MODULES))
def test_experiment_runs_tiny(tiny_results: dict[str, Any], exp_id: str) -> None:
    res: ExperimentResult = tiny_results[exp_id]
    cfg: LabConfig = tiny_results["cfg"]
    assert res.id == exp_id
    assert res.claims == EXPERIMENTS[exp_id].claims
    assert res.verdict in VERDICTS
    assert res.summary and res.question and res.method and res.verdict_rule
    for fig in res.figures:
        path = cfg.out / fig
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    # JSON-able with no NaN/inf, and no wall-clock numbers among the reproducible ones
    text = json.dumps(res.to_dict(include_timings=False), allow_nan=False)
    assert "timings" not in json.loads(text)
    # one verdict and one key number per claim, for the claims table
    assert set(res.numbers["claim_verdicts"]) == set(res.claims)
    assert set(res.numbers["claim_summaries"]) == set(res.claims)
    assert all(v in VERDICTS for v in res.numbers["claim_verdicts"].values())


def test_same_config_same_numbers(tiny_results: dict[str, Any], tmp_path: Path) -> None:
    again = EXPERIMENTS["E5"].run(LabConfig(preset="tiny", out=tmp_path))
    assert json.dumps(again.numbers, sort_keys=True) == json.dumps(
        tiny_results["E5"].numbers, sort_keys=True
    )
    assert again.verdict == tiny_results["E5"].verdict


def test_e4_has_every_arm(tiny_results: dict[str, Any]) -> None:
    numbers = tiny_results["E4"].numbers
    assert list(numbers["settings"]) == ["high lr", "negative update"]
    arms = numbers["settings"]["high lr"]["arms"]
    expected = {"relu", "relu, low lr", "relu, bias 0.01", "leaky_relu", "prelu", "elu", "selu"}
    assert expected <= set(arms)
    assert {"relu, RAI", "relu, ReDo"} <= set(arms) | set(numbers["missing_arms"])
    assert all(len(a["stuck"]) == 2 for a in arms.values())
    assert "relu, low lr" not in numbers["settings"]["negative update"]["arms"]


# --------------------------------------------------------------------------------------
# verdict rules on constructed numbers
# --------------------------------------------------------------------------------------

CLEAR_HIGH = [0.30, 0.32, 0.29, 0.31, 0.30]
ZEROS = [0.0, 0.0, 0.0, 0.0, 0.0]
ACC = [0.60, 0.61, 0.59, 0.60, 0.62]


def _e1_rows(dead_high: list[float]) -> dict[str, Any]:
    rows = [
        {"lr": 0.01, "diverged": 0, "dead": ZEROS, "acc": [a - 0.1 for a in ACC]},
        {"lr": 0.1, "diverged": 0, "dead": ZEROS, "acc": ACC},
        {"lr": 1.0, "diverged": 0, "dead": dead_high, "acc": ACC},
        {"lr": 10.0, "diverged": 5, "dead": [], "acc": [0.1] * 5},
    ]
    return {"results": {"relu": rows}}


def test_e1_rules() -> None:
    v, d = e1_learning_rate.verdicts(_e1_rows(CLEAR_HIGH))
    assert v == {"C3": "supported", "C6": "supported"}
    assert d["C3"]["lr_high"] == 1.0 and d["C6"]["lr_safe"] == 0.1
    v, _ = e1_learning_rate.verdicts(_e1_rows(ZEROS))
    assert v == {"C3": "not supported", "C6": "not supported"}


def _e2_numbers(effect: bool) -> dict[str, Any]:
    dead = CLEAR_HIGH if effect else ZEROS
    return {
        "high_lr": 2.0,
        "bias_init": {"values": [-3.0, 0.0, 0.01], "dead_after": [dead, ZEROS, ZEROS]},
        "bias_kick": {"values": [0.0, -5.0], "dead_end": [ZEROS, dead]},
        "high_lr_bias": {"values": [0.0, 0.01], "dead_after": [dead, ZEROS]},
    }


def test_e2_rules() -> None:
    v, _ = e2_bias.verdicts(_e2_numbers(True))
    assert v == {"C4": "supported", "C7": "supported"}
    v, _ = e2_bias.verdicts(_e2_numbers(False))
    assert v == {"C4": "not supported", "C7": "not supported"}


def _e4_numbers(effect: bool) -> dict[str, Any]:
    other = ZEROS if effect else CLEAR_HIGH
    arms = {"relu": {"stuck": CLEAR_HIGH, "acc": ACC}}
    for v in e4_remedies.VARIANTS:
        arms[v] = {"stuck": other, "acc": ACC}
    arms["relu, ReDo"] = {"stuck": other, "acc": ACC}
    return {"settings": {"a": {"arms": arms}, "b": {"arms": arms}}}


def test_e4_rules() -> None:
    assert e4_remedies.verdicts(_e4_numbers(True))[0] == {"C8": "supported", "C16": "supported"}
    v = e4_remedies.verdicts(_e4_numbers(False))[0]
    assert v == {"C8": "not supported", "C16": "not supported"}


def _e5_numbers(best: float) -> dict[str, Any]:
    rows = []
    for lr in (0.3, 2.0):
        for s in e5_leaky_slope.SLOPES:
            acc = [a + (0.05 if s == best else 0.0) for a in ACC]
            rows.append(
                {"lr": lr, "slope": s, "stuck": CLEAR_HIGH if s == 0 else ZEROS, "acc": acc}
            )
    return {"rows": rows}


def test_e5_rules() -> None:
    assert e5_leaky_slope.verdicts(_e5_numbers(0.01))[0] == "supported"
    # 0.2 beats 0.01 by 5 points on every seed: "why 0.01" fails, dying is prevented
    v, d = e5_leaky_slope.verdicts(_e5_numbers(0.2))
    why = d["why_0.01 (lr 2.0)"]
    assert why["best_slope"] == 0.2 and why["verdict"] == "not supported"
    assert d["no_dying (lr 2.0)"]["verdict"] == "supported"
    assert v == "mixed"


# --------------------------------------------------------------------------------------
# ReDo through the sequential trainer's hook
# --------------------------------------------------------------------------------------


def test_redo_hook_recycles_units_killed_by_construction() -> None:
    from torch import nn

    from deadrelu.lab.data import Dataset, load
    from deadrelu.lab.trainer import MLP, Member, TrainConfig, train_sequential
    from deadrelu.remedies import recycle

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
    hook = e4_remedies.redo_hook(recycle, data.x_train, every=2, last=4, tau=0.0)
    cured = train_sequential([member], tc, data, on_step=hook)
    first = cured.dead_masks[0]  # (T, 1, 16)
    assert torch.nonzero(first[0, 0]).flatten().tolist() == [3, 7]  # dead at init
    assert not first[-1, 0, [3, 7]].any()  # recycled at step 2: alive afterwards
    # their bias was reset from -1000 to 0 (then trained a few steps)
    assert cured.state["linears.0.bias"][0, [3, 7]].abs().max() < 1.0
