"""E3 (C5): revival bookkeeping and its attribution on ground truth, weight snapshots
against the trainer's final state, plain SGD keeping first-layer units dead, and the C5 rule
on constructed numbers. (Moved here from test_lab_experiments_a.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from deadrelu.lab.core import REGISTRY, LabConfig, Sweep
from deadrelu.lab.data import Dataset, load
from deadrelu.lab.experiments import e3_irreversibility as e3
from deadrelu.lab.trainer import Member, TrainConfig, build_member


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_revival_ground_truth() -> None:
    # unit 0: dead at eval 1, alive at 2 -> revived; unit 1: always dead; unit 2: dead from
    # eval 2 on; unit 3: dead only at the last evaluation (not counted)
    masks = torch.tensor([[0, 1, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    assert e3.revival(masks) == (3, 1)
    first, again = e3._revival_steps(masks)
    assert first.tolist() == [1, 0, 2, -1]
    assert again.tolist() == [2, -1, -1, -1]


def _tiny_data(n: int = 64) -> Dataset:
    x = torch.linspace(-1.0, 1.0, n).unsqueeze(1).repeat(1, 2)  # 2 features, x1 = x2
    y = (x[:, 0] > 0).long()
    return Dataset("toy", x, y, x, y, 2)


def test_attribution_upstream_vs_own_by_construction() -> None:
    tc = TrainConfig(widths=(2, 2, 1, 2), steps=0)
    member = Member(seed=0, lr=0.1)
    base = build_member(member, tc).state_dict()

    def snap(w1: list[list[float]], b1: list[float], w2: list[float], b2: float) -> Any:
        s = {k: v.clone() for k, v in base.items()}
        s["linears.0.weight"] = torch.tensor(w1)
        s["linears.0.bias"] = torch.tensor(b1)
        s["linears.1.weight"] = torch.tensor([w2])
        s["linears.1.bias"] = torch.tensor([b2])
        return s

    x = _tiny_data().x_train
    # dead at t=0: layer 1 outputs 0 everywhere (bias -10), so unit 0 of layer 2 is b2 < 0
    dead = snap([[1.0, 0.0], [0.0, 1.0]], [-10.0, -10.0], [1.0, 1.0], -0.5)
    # alive at t=1 because layer 1 came back (its own weights unchanged): upstream
    upstream = snap([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], [1.0, 1.0], -0.5)
    # alive at t=1 because its own bias moved (layer 1 still dead): own
    own = snap([[1.0, 0.0], [0.0, 1.0]], [-10.0, -10.0], [1.0, 1.0], 0.5)
    units = torch.tensor([0])
    for later, want in ((upstream, True), (own, False)):
        snaps = {0: dead, 10: later}
        got = e3._attribute(member, tc, snaps, [0, 10], 1, units, 0, 1, x)
        assert got.tolist() == [want]


def test_snapshots_match_the_trainer_and_sgd_keeps_first_layer_units_dead() -> None:
    d = load("synthetic", 0)
    data = Dataset(d.name, d.x_train[:300], d.y_train[:300], d.x_test[:100], d.y_test[:100], 10)
    tc = TrainConfig(
        widths=(40, 12, 12, 10), steps=12, batch_size=50, eval_every=4, record_masks=True
    )
    members = [Member(seed=s, lr=0.5) for s in range(2)]
    # a kick of -1000 on layer 1 kills every unit of it for good (SGD: zero gradient)
    res, snaps = e3._train_with_snapshots(members, tc, data, kicks=(-1000.0, 0.0))
    for i in range(2):
        assert sorted(snaps[i]) == res.steps
        for k, v in res.state.items():
            assert torch.equal(snaps[i][res.steps[-1]][k], v[i])
        masks = res.dead_masks[0][:, i, :]  # (T, 12)
        assert not masks[0].any() and masks[1:].all()  # dead from the kick on, never back
        assert e3.revival(masks) == (12, 0)
        # the kick is in the snapshot the evaluation after it saw
        assert bool((snaps[i][4]["linears.0.bias"] < -900).all())


def _arm(act: str, dead: list[list[int]], revived: list[list[int]]) -> dict[str, Any]:
    per_seed = [
        [
            {
                "ever_dead": d,
                "revived": r,
                "by_upstream": r if layer else 0,
                "by_own": 0 if layer else r,
                "whole_layer_died": False,
                "whole_layer_dead_at_end": False,
                "dead_final": d - r,
            }
            for layer, (d, r) in enumerate(zip(ds, rs, strict=True))
        ]
        for ds, rs in zip(dead, revived, strict=True)
    ]
    return {"act": act, "per_seed": per_seed, "diverged": [False] * len(dead)}


def _sweep(revive_layer2: int) -> Sweep:
    dead = [[30, 40], [35, 42], [28, 38], [32, 45], [31, 41]]
    rev = [[0, revive_layer2 + s % 3 if revive_layer2 else 0] for s in range(5)]
    arms = {
        "relu, SGD, kick": _arm("relu", dead, rev),
        "leaky_relu, SGD, kick": _arm("leaky_relu", dead, [[20, 20]] * 5),
    }
    return Sweep(numbers={"widths": [40, 64, 64, 10], "arms": arms}, n_seeds=5)


def test_c5_rule_on_constructed_numbers() -> None:
    never = e3.judge(_sweep(0), None).claims["C5"]
    assert never.verdict == "supported"  # 0 of ~150 and 0 of ~200: below 5 %
    often = e3.judge(_sweep(20), None).claims["C5"]
    per = often.evidence["per_arm"]["relu, SGD, kick"]
    assert per["layer1"]["verdict"] == "supported"
    assert per["layer2"]["verdict"] == "not supported"
    assert often.verdict == "mixed"
    # the leaky arm is shown, not judged; no interval is degenerate
    assert per["layer1"]["lo"] == 0.0 and per["layer1"]["hi"] > 0.0
    # a resample uses only its seeds
    one = e3.judge(_sweep(20), [1, 1, 1, 1, 1]).claims["C5"]
    assert one.evidence["per_arm"]["relu, SGD, kick"]["layer1"]["ever_dead"] == 5 * 35


def test_e3_tiny_end_to_end(tmp_path: Path) -> None:
    assert REGISTRY["E3"] is e3.EXPERIMENT
    cfg = LabConfig(preset="tiny", out=tmp_path)
    sw = e3.EXPERIMENT.sweep(cfg)
    assert set(sw.numbers["arms"]) == set(e3.ARMS)
    jd = e3.EXPERIMENT.judge(sw, None)
    assert jd.claims["C5"].verdict in {"supported", "not supported", "mixed", "n/a"}
    json.dumps(sw.numbers, allow_nan=False)
    json.dumps(jd.claims["C5"].evidence, allow_nan=False)
    figures = e3.figure(cfg, sw, jd)
    assert (tmp_path / figures[0]).read_bytes()[:4] == b"\x89PNG"
