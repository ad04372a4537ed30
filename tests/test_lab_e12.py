"""E12 (C7, bias 0.01): the bias option of born_dead_rate on ground truth, the C7 rule on
constructed numbers, and a tiny end-to-end run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from deadrelu.born_dead import born_dead_rate
from deadrelu.lab.core import REGISTRY, LabConfig, Sweep
from deadrelu.lab.experiments import e12_bias_init as e12


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_born_dead_rate_bias_option() -> None:
    # a bias of -1000 kills the first hidden layer of every net on every input
    r = born_dead_rate(4, 3, trials=50, seed=0, n_inputs=16, bias=-1000.0)
    assert r.dead == 50 and bool((r.first_dead_layer == 1).all())
    # bias 0 is the default "he" draw, net for net
    a = born_dead_rate(6, 2, trials=200, seed=3, n_inputs=16, bias=0.0)
    b = born_dead_rate(6, 2, trials=200, seed=3, n_inputs=16)
    assert torch.equal(a.first_dead_layer, b.first_dead_layer)


def _sweep(born: tuple[int, int, int], dead: tuple[int, int, int]) -> Sweep:
    """Constructed numbers, 6 seeds: born-dead counts of 100 nets per (bias 0, 0.01, 0.1)
    at every width; dead units (of 2 x 50) after training per bias; a jitter of 0-2 whose
    phase differs by arm, so per-seed differences vary (as measured ones do)."""
    seeds, widths = 6, [2, 3]
    counts = {
        f"{b:g}": {str(w): [born[j] + (s + j) % 3 for s in range(seeds)] for w in widths}
        for j, b in enumerate(e12.BIASES)
    }
    arms = {
        f"{b:g}": {
            "dead_init": [[0, 0] for _ in range(seeds)],
            "dead_final": [[0, dead[j] + (s + j) % 3] for s in range(seeds)],
            "diverged": [False] * seeds,
            "test_acc": [0.5] * seeds,
        }
        for j, b in enumerate(e12.BIASES)
    }
    numbers: dict[str, Any] = {
        "preset": "quick",
        "born_dead": {
            "widths": widths,
            "depth": 10,
            "nets_per_seed": 100,
            "inputs": 16,
            "seeds": seeds,
            "counts": counts,
        },
        "training": {
            "widths": [40, 50, 50, 10],
            "steps": 10,
            "lr": 2.0,
            "seeds": seeds,
            "planned_seeds": 15,
            "arms": arms,
        },
    }
    return Sweep(numbers=numbers, n_seeds=seeds)


def test_c7_rule_on_constructed_numbers() -> None:
    both = e12.judge(_sweep(born=(90, 50, 48), dead=(20, 10, 8)), None).claims["C7"]
    assert both.verdict == "supported"
    init_only = e12.judge(_sweep(born=(90, 50, 48), dead=(20, 20, 20)), None).claims["C7"]
    assert init_only.evidence["born_dead"]["verdict"] == "supported"
    assert init_only.evidence["high_lr"]["verdict"] == "not supported"
    assert init_only.verdict == "mixed"
    neither = e12.judge(_sweep(born=(50, 50, 50), dead=(20, 20, 20)), None).claims["C7"]
    assert neither.verdict == "not supported"
    # a resample uses only its seeds: seed 0 three times and seed 1 three times
    resampled = e12.judge(_sweep(born=(90, 50, 48), dead=(20, 10, 8)), [0, 0, 0, 1, 1, 1])
    assert resampled.claims["C7"].evidence["high_lr"]["seeds_used"] == 6


def test_e12_tiny_end_to_end(tmp_path: Path) -> None:
    assert REGISTRY["E12"] is e12.EXPERIMENT
    cfg = LabConfig(preset="tiny", out=tmp_path)
    sw = e12.EXPERIMENT.sweep(cfg)
    arms = sw.numbers["training"]["arms"]
    assert all(len(a["dead_final"]) == sw.n_seeds for a in arms.values())
    jd = e12.EXPERIMENT.judge(sw, None)
    assert jd.claims["C7"].verdict in {"supported", "not supported", "mixed", "n/a"}
    json.dumps(sw.numbers, allow_nan=False)
    json.dumps(jd.claims["C7"].evidence, allow_nan=False)
    figures = e12.figure(cfg, sw, jd)
    assert (tmp_path / figures[0]).read_bytes()[:4] == b"\x89PNG"
