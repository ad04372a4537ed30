"""Activation frequency per unit and the per-site summary with its histogram
(:meth:`Report.activation_frequency`, :meth:`Report.frequencies`).

Ground truth by construction: hand-built statistics whose active counts put each unit in a
known bin (the expected counts are written out by hand), and the test MLP whose bias -1000
units never fire (frequency exactly 0) while every other unit fires on every position
(frequency exactly 1).
"""

from __future__ import annotations

import math

import pytest
import torch
from rich.console import Console

import deadrelu as dr
from deadrelu import activations
from deadrelu.capture import Site
from deadrelu.report import FREQUENCY_EDGES, Report, frequency_bin_labels, frequency_histogram
from deadrelu.stats import UnitStats
from models import DeadMLP

POSITIONS = 10**9
#: active count -> the bin it must land in (bins: 0 | (0,1e-8) | [1e-8,1e-7) | ... | [0.1,1])
ACTIVE_TO_BIN = {
    0: 0,  # never active
    1: 1,  # 1e-9
    10: 2,  # exactly 1e-8: a lower edge belongs to its bin
    99: 2,
    100: 3,  # 1e-7
    10**7 - 1: 7,  # just below 1e-2
    10**7: 8,  # exactly 1e-2
    10**8: 9,  # 0.1
    10**9: 9,  # always active: the last bin includes 1
}


def _report(active: list[int], positions: int = POSITIONS) -> Report:
    s = UnitStats.empty(len(active), detail="counts")
    s.positions.fill_(positions)
    s.active.copy_(torch.tensor(active, dtype=torch.int64))
    s.abs_sum.copy_(torch.tensor(active, dtype=torch.float64))
    relu = activations.get("relu")
    assert relu is not None
    return Report({"ffn": s}, {"ffn": Site("ffn", relu, -1, "module")})


def test_edges_are_zero_then_decades_to_one() -> None:
    assert FREQUENCY_EDGES == (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    labels = ["0", "<1e-8", "1e-8", "1e-7", "1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1"]
    assert frequency_bin_labels() == labels


def test_hand_built_counts_land_in_their_bins() -> None:
    active = list(ACTIVE_TO_BIN)
    report = _report(active)
    freq = report.activation_frequency("ffn")
    assert freq.dtype == torch.float64 and freq.shape == (len(active),)
    assert freq.tolist() == [a / POSITIONS for a in active]
    (row,) = report.frequencies()
    expected = [0] * len(FREQUENCY_EDGES)
    for b in ACTIVE_TO_BIN.values():
        expected[b] += 1
    assert list(row.counts) == expected == [1, 1, 2, 1, 0, 0, 0, 1, 1, 2]
    assert row.units == 9 and row.positions == POSITIONS
    assert row.dead_fraction == 1 / 9
    # rarely active: active on < 1 % of positions: the first six counts above
    assert row.rarely_active_fraction == 6 / 9
    assert row.edges == FREQUENCY_EDGES and len(row.labels) == len(row.counts)


def test_killed_units_are_in_the_zero_bin_and_the_rest_in_the_top_bin() -> None:
    model = DeadMLP(dead1=(1, 4, 9), dead2=(7,))  # bias -1000: dead; others always active
    report = dr.scan(model, model.make_batches(n=2))
    rows = {r.name: r for r in report.frequencies()}
    assert list(rows) == ["relu1", "relu2"]  # report order
    for name, dead, units in (("relu1", [1, 4, 9], 16), ("relu2", [7], 12)):
        freq = report.activation_frequency(name)
        expected = torch.ones(units, dtype=torch.float64)
        expected[dead] = 0.0
        assert torch.equal(freq, expected)
        assert rows[name].counts == (len(dead), *[0] * 8, units - len(dead))
        assert rows[name].dead_fraction == len(dead) / units
        assert rows[name].rarely_active_fraction == len(dead) / units
        assert rows[name].positions == 2 * 32


def test_site_that_saw_nothing_has_nan_frequency_and_an_empty_histogram() -> None:
    report = _report([0, 0, 0], positions=0)
    assert torch.isnan(report.activation_frequency("ffn")).all()
    (row,) = report.frequencies()
    assert row.counts == (0,) * len(FREQUENCY_EDGES)
    assert row.dead_fraction == 0.0  # no position: no class, dead included


def test_custom_edges_and_bad_edges() -> None:
    report = _report([0, 10, 100, 1000], positions=1000)
    (row,) = report.frequencies(edges=(0.0, 0.01, 0.1, 1.0))
    assert row.counts == (1, 0, 1, 2)  # 0 | (0, .01) | [.01, .1) | [.1, 1]: .01 .1 1
    for bad in ((0.0, 1.0, 0.5), (0.1, 1.0), (0.0, 0.5), (0.0, 0.1, 0.1, 1.0), (0.0,)):
        with pytest.raises(ValueError, match="increase strictly from 0 to 1"):
            report.frequencies(edges=bad)
    with pytest.raises(KeyError, match="no call site"):
        report.activation_frequency("nope")


def test_histogram_function_ignores_nan() -> None:
    f = torch.tensor([0.0, math.nan, 1e-8, 1.0, 0.5], dtype=torch.float64)
    assert frequency_histogram(f) == (1, 0, 1, 0, 0, 0, 0, 0, 0, 2)


def test_json_carries_the_histogram_and_round_trips() -> None:
    report = _report(list(ACTIVE_TO_BIN))
    data = report.to_dict()
    (site,) = data["sites"]
    assert site["frequency"]["counts"] == [1, 1, 2, 1, 0, 0, 0, 1, 1, 2]
    assert site["frequency"]["edges"] == list(FREQUENCY_EDGES)
    assert site["frequency"]["rarely_active_fraction"] == 6 / 9
    again = Report.from_json(report.to_json())
    assert again.frequencies() == report.frequencies()


def test_frequency_table_is_compact_and_keeps_site_names() -> None:
    report = _report(list(ACTIVE_TO_BIN))
    report.meta["tokens"] = 123
    for width in (60, 100):
        console = Console(width=width, record=True, color_system=None)
        console.print(report.frequency_table(width=width))
        text = console.export_text()
        assert all(len(line) <= width for line in text.splitlines()), text
        assert "ffn" in text and "123 tokens" in text and "1e-8" in text
    row = next(line for line in text.splitlines() if "ffn" in line)
    spark = row.split("│")[-2].strip()
    # one character per bin: empty bins are '·', the largest bins the full block
    assert len(spark) == len(FREQUENCY_EDGES)
    counts = report.frequencies()[0].counts
    assert [ch == "·" for ch in spark] == [c == 0 for c in counts]
    assert [ch == "█" for ch in spark] == [c == max(counts) for c in counts]
    assert "11.1" in row and "66.7" in row  # dead %, rarely active %
