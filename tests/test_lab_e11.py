"""E11 (C5, C16): re-initialisation against deadrelu.remedies.recycle, dead/dormant masks on
units killed by construction, the rules on constructed numbers, a tiny end-to-end run."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.func import stack_module_state

from deadrelu.activations import get
from deadrelu.lab.core import REGISTRY, LabConfig, Sweep
from deadrelu.lab.experiments import e11_plasticity as e11
from deadrelu.lab.trainer import MLP
from deadrelu.remedies import recycle


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _stack(models: list[MLP]) -> dict[str, torch.Tensor]:
    params, _ = stack_module_state(models)
    return {k: v.detach().clone() for k, v in params.items()}


def test_reinit_units_does_what_recycle_does() -> None:
    torch.manual_seed(0)
    models = [MLP((6, 5, 4, 3), "relu") for _ in range(2)]
    with torch.no_grad():  # units 1 and 3 of layer 1 of member 0 are dead (bias -1000)
        models[0].linears[0].bias[[1, 3]] = -1000.0
    before = _stack(models)
    params = {k: v.clone() for k, v in before.items()}
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, [1, 3]] = True
    n = e11.reinit_units(params, 0, mask, torch.Generator().manual_seed(1))
    assert n == 2
    # recycle on member 0 as a module, the same units
    ref = MLP((6, 5, 4, 3), "relu")
    ref.load_state_dict({k: v[0] for k, v in before.items()})
    mask0 = torch.tensor([False, True, False, True, False])
    summary = recycle(ref, {"acts.0": mask0}, example_inputs=torch.randn(3, 6))
    assert summary.units == {"acts.0": [1, 3]}
    got = {k: v[0] for k, v in params.items()}
    want = ref.state_dict()
    for k in ("linears.0.bias", "linears.1.weight", "linears.2.weight", "linears.2.bias"):
        assert torch.equal(got[k], want[k]), k  # bias 0 and outgoing 0 exactly as recycle
    w = got["linears.0.weight"]
    assert torch.equal(w[[0, 2, 4]], before["linears.0.weight"][0, [0, 2, 4]])  # untouched
    assert bool((w[[1, 3]].abs() <= 1 / math.sqrt(6)).all())  # nn.Linear's default bound
    assert not torch.equal(w[[1, 3]], before["linears.0.weight"][0, [1, 3]])
    # member 1 is untouched; the function on the data is unchanged (the units were dead)
    assert all(torch.equal(params[k][1], before[k][1]) for k in params)
    x = torch.randn(50, 6)
    act = get("relu")
    assert act is not None
    old, _ = e11._forward(before, 2, act, x.expand(2, -1, -1))
    new, _ = e11._forward(params, 2, act, x.expand(2, -1, -1))
    assert torch.allclose(old, new)


def test_dead_and_dormant_masks_find_the_killed_units() -> None:
    torch.manual_seed(0)
    model = MLP((6, 8, 8, 3), "relu")
    with torch.no_grad():
        model.linears[1].bias[[2, 5]] = -1000.0
    params = _stack([model])
    act = get("relu")
    assert act is not None
    dead, dormant = e11._layer_masks(params, 2, act, torch.randn(200, 6), tau=0.025)
    assert torch.nonzero(dead[1][0]).flatten().tolist() == [2, 5]
    assert bool(dormant[1][0, [2, 5]].all())


def _sweep(dead_growth: int, redo_gain: float) -> Sweep:
    seeds, tasks = 5, 4

    def arm(dead0: int, growth: int, acc: float) -> dict[str, Any]:
        return {
            "test_acc": [[acc + 0.01 * t + 0.003 * s for t in range(tasks)] for s in range(seeds)],
            "dead": [
                [[0, dead0 + growth * t // (tasks - 1) + (s + t) % 2] for t in range(tasks)]
                for s in range(seeds)
            ],
        }

    arms = {
        "relu": arm(2, dead_growth, 0.5),
        "leaky_relu": arm(2, 0, 0.5),
        "relu + ReDo": arm(0, 0, 0.5 + redo_gain),
        "relu + CBP": arm(1, 0, 0.5),
    }
    arms["relu + ReDo"]["test_acc"][0][-1] += 0.002  # per-seed differences vary
    numbers = {"setting": {"tasks": tasks, "widths": [40, 50, 50, 10], "lr": 1.0}, "arms": arms}
    return Sweep(numbers=numbers, n_seeds=seeds)


def test_rules_on_constructed_numbers() -> None:
    jd = e11.judge(_sweep(dead_growth=20, redo_gain=0.05), None)
    assert jd.claims["C5"].verdict == "supported"  # 2 -> 22 of 100 dead
    assert jd.claims["C16"].verdict == "supported"  # fewer dead and +0.05 accuracy
    flat = e11.judge(_sweep(dead_growth=0, redo_gain=0.0), None)
    assert flat.claims["C5"].verdict == "not supported"
    c16 = flat.claims["C16"].evidence
    assert c16["late_accuracy"]["verdict"] == "not supported"
    assert flat.claims["C16"].verdict != "supported"


def test_e11_tiny_end_to_end(tmp_path: Path) -> None:
    assert REGISTRY["E11"] is e11.EXPERIMENT
    cfg = LabConfig(preset="tiny", out=tmp_path)
    sw = e11.EXPERIMENT.sweep(cfg)
    tasks = sw.numbers["setting"]["tasks"]
    for arm in sw.numbers["arms"].values():
        assert len(arm["test_acc"]) == sw.n_seeds
        assert all(len(a) == tasks for a in arm["test_acc"])
    jd = e11.EXPERIMENT.judge(sw, None)
    assert set(jd.claims) == {"C5", "C16"}
    json.dumps(sw.numbers, allow_nan=False)
    json.dumps({k: v.evidence for k, v in jd.claims.items()}, allow_nan=False)
    figures = e11.figure(cfg, sw, jd)
    assert (tmp_path / figures[0]).read_bytes()[:4] == b"\x89PNG"
