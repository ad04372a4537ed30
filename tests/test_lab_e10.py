"""E10: the born-dead theory against brute force, the proportion intervals, the C15 rule."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deadrelu.born_dead import born_dead_probability
from deadrelu.lab.core import Sweep
from deadrelu.lab.experiments import e10_born_dead as e10
from deadrelu.lab.verdicts import proportion_ci


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _brute_force(width: int, depth: int, nets: int, seed: int) -> int:
    """Nets (of ``nets``) with some hidden layer 0 on every input of a 65-point grid of
    [-1, 1]: plain matrix products, He weights, zero biases (the oracle)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.linspace(-1.0, 1.0, 65, dtype=torch.float64).expand(nets, 1, 65)
    dead = torch.zeros(nets, dtype=torch.bool)
    for _layer in range(depth):
        fan_in = h.shape[1]
        w = torch.randn(nets, width, fan_in, generator=g, dtype=torch.float64)
        h = torch.relu(torch.bmm(w * math.sqrt(2.0 / fan_in), h))  # (nets, width, 65)
        dead |= ~h.flatten(1).any(dim=1)
    return int(dead.sum())


@pytest.mark.parametrize(("width", "depth", "seed"), [(2, 5, 11), (3, 10, 12), (5, 12, 13)])
def test_theory_equals_brute_force_monte_carlo(width: int, depth: int, seed: int) -> None:
    nets = 3000
    k = _brute_force(width, depth, nets, seed)
    _, lo, hi = proportion_ci(k, nets, confidence=0.999)
    exact = born_dead_probability(width, depth)[-1]
    assert lo <= exact <= hi, (k / nets, lo, hi, exact)


def test_theory_closed_forms_width_one_and_depth_two() -> None:
    # width 1: one of the two rays is 0 after layer 1; the other dies w.p. 1/2 per layer
    assert born_dead_probability(1, 6) == pytest.approx([1 - 2.0 ** -(d - 1) for d in range(1, 7)])
    # depth 2: after layer 1 both rays live (orthogonal, both die together w.p. 4^-N) or
    # one does (w.p. 2 * 2^-N; it dies w.p. 2^-N)
    for n in (2, 3, 4, 6):
        want = (1 - 2.0 ** (1 - n)) * 4.0**-n + 2.0 ** (1 - n) * 2.0**-n
        assert born_dead_probability(n, 2)[1] == pytest.approx(want, abs=1e-12)


def test_theory_is_monotone_and_finer_rules_agree() -> None:
    coarse = born_dead_probability(4, 30, grid=32, points=2**12)
    fine = born_dead_probability(4, 30, grid=96, points=2**15)
    assert coarse[0] == 0.0
    assert all(b >= a for a, b in itertools.pairwise(coarse))
    assert max(abs(a - b) for a, b in zip(coarse, fine, strict=True)) < 2e-3


def _sweep(he_deep: int, rai_deep: int, gap: float) -> Sweep:
    """Constructed counts: width 2 and 3, depth 10, 5 seeds of 1000 (He) / 1000 (RAI)
    nets; the theory is the Monte Carlo rate plus ``gap``."""
    seeds, nets, depth = 5, 1000, 10
    counts = {
        init: {
            str(w): [
                [0] + [round(deep * d / depth) for d in range(2, depth + 1)] for _ in range(seeds)
            ]
            for w in (2, 3)
        }
        for init, deep in (("he", he_deep), ("he_bias", he_deep), ("rai", rai_deep))
    }
    theory = {
        str(w): [
            min(1.0, c / nets + (gap if d > 0 else 0.0))
            for d, c in enumerate(counts["he"][str(w)][0])
        ]
        for w in (2, 3)
    }
    numbers = {
        "setting": {
            "widths": [2, 3],
            "max_depth": depth,
            "nets_per_seed": {"he": nets, "he_bias": nets, "rai": nets},
            "seeds": list(range(seeds)),
        },
        "born_dead_counts": counts,
        "theory_he": theory,
    }
    return Sweep(numbers=numbers, n_seeds=seeds)


def test_c15_rule_on_constructed_counts() -> None:
    good = e10.judge(_sweep(he_deep=900, rai_deep=300, gap=0.0), None).claims["C15"]
    assert good.verdict == "supported"
    # RAI as bad as He: the RAI part is not supported, the rest is: mixed
    same = e10.judge(_sweep(he_deep=900, rai_deep=900, gap=0.0), None).claims["C15"]
    assert same.evidence["rai_lowers_it"]["verdict"] == "not supported"
    assert same.verdict == "mixed"
    # a theory 0.1 off the Monte Carlo: agreement not supported
    off = e10.judge(_sweep(he_deep=500, rai_deep=100, gap=0.1), None).claims["C15"]
    assert off.evidence["agreement"]["verdict"] == "not supported"
    # only the chosen seeds count: seeds [0, 0, 0] pool 3 x 1000 nets
    three = e10.judge(_sweep(he_deep=900, rai_deep=300, gap=0.0), [0, 0, 0]).claims["C15"]
    assert three.evidence["nets_pooled"]["he"] == 3000


def test_e10_tiny_end_to_end(tmp_path: Path) -> None:
    from deadrelu.lab.core import REGISTRY, LabConfig

    assert REGISTRY["E10"] is e10.EXPERIMENT
    cfg = LabConfig(preset="tiny", out=tmp_path)
    sw = e10.EXPERIMENT.sweep(cfg)
    counts = sw.numbers["born_dead_counts"]["he"]["2"]
    assert len(counts) == sw.n_seeds == cfg.n_seeds  # one entry per seed
    jd = e10.EXPERIMENT.judge(sw, None)
    assert jd.claims["C15"].verdict in {"supported", "not supported", "mixed"}
    json.dumps(sw.numbers, allow_nan=False)
    json.dumps(jd.claims["C15"].evidence, allow_nan=False)
    figures = e10.figure(cfg, sw, jd)
    assert (tmp_path / figures[0]).read_bytes()[:4] == b"\x89PNG"
