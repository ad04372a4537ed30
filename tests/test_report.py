"""Report: classification through deadrelu.classify, JSON round trip, table, plots."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.table import Table

from deadrelu import activations
from deadrelu.capture import Site
from deadrelu.report import CLASSES, SCHEMA, Report, plot_history
from deadrelu.stats import UnitStats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_stats(
    active: list[int],
    mean_abs: list[float],
    positions: int = 1000,
    z_range: tuple[float, float] = (-1.0, 1.0),
    nonfinite: list[int] | None = None,
) -> UnitStats:
    """Statistics with chosen per-unit counts and mean |output|."""
    u = len(active)
    s = UnitStats.empty(u)
    s.positions.fill_(positions)
    s.active.copy_(torch.tensor(active))
    s.abs_sum.copy_(torch.tensor(mean_abs, dtype=torch.float64) * positions)
    s.z_min.fill_(z_range[0])
    s.z_max.fill_(z_range[1])
    if nonfinite is not None:
        s.nonfinite.copy_(torch.tensor(nonfinite))
    return s


def site(name: str, act: str = "relu", unit_dim: int = -1) -> Site:
    a = activations.get(act)
    assert a is not None
    return Site(name, a, unit_dim, "module", name)


def sample_report(tau: float = 0.025) -> Report:
    stats = {
        "fc.act": make_stats([0, 5, 1000, 400], [0.0, 0.01, 1.0, 1.0]),
        "conv.elu": make_stats([0, 0, 300], [1.0, 1.0, 1.0], z_range=(-50.0, -20.0)),
        "conv.elu_alive": make_stats([10, 20], [0.5, 0.6], z_range=(-3.0, 2.0)),
    }
    stats["conv.elu"].z_max[2] = 3.0  # unit 2 reaches the linear part: not saturated
    sites = {
        "fc.act": site("fc.act"),
        "conv.elu": site("conv.elu", "elu(alpha=0.5)", 1),
        "conv.elu_alive": site("conv.elu_alive", "elu", 1),
    }
    return Report(stats, sites, tau=tau, meta={"batches": 3})


def test_classes_from_classify() -> None:
    r = sample_report()
    # layer mean of mean|h| = 0.5025 -> scores 0, 0.0199, 1.99, 1.99
    assert r.dead_units("fc.act") == [0]
    assert r.dormant_units("fc.act") == [0, 1]
    assert r.rarely_active_units("fc.act") == [0, 1]  # < 1 % of 1000 positions
    assert r.saturated_units("fc.act") == []  # ReLU does not saturate: it dies
    assert r.saturated_units("conv.elu") == [0, 1]  # ELU'(-20) = 0.5 e^-20 < 1e-3
    assert r.dead_units("conv.elu") == [0, 1]
    assert r.saturated_units("conv.elu_alive") == []
    assert sample_report(tau=0.0).dormant_units("fc.act") == [0]
    assert r.dead_fraction == pytest.approx(3 / 9)
    assert r.summary()["dead"] == 3 and r.summary()["units"] == 9
    masks = r.masks("fc.act")
    assert set(masks) == set(CLASSES) and masks["dead"].tolist() == [True, False, False, False]


def test_layers_rows() -> None:
    rows = sample_report().layers
    assert [row.name for row in rows] == ["fc.act", "conv.elu", "conv.elu_alive"]
    first = rows[0]
    assert (first.units, first.dead, first.dormant, first.rarely_active) == (4, 1, 2, 2)
    assert first.dead_fraction == pytest.approx(0.25)
    assert first.mean_active_fraction == pytest.approx((0 + 5 + 1000 + 400) / 4000)
    assert rows[1].activation == "elu(alpha=0.5)" and rows[1].unit_dim == 1


def test_unseen_site_and_nonfinite_units() -> None:
    unseen = UnitStats.empty(3)
    nan_stats = make_stats([5, 5, 5], [1.0, 0.0, 1.0], nonfinite=[0, 0, 2])
    nan_stats.abs_sum[2] = float("nan")
    r = Report({"a": unseen, "b": nan_stats}, {"a": site("a"), "b": site("b")})
    assert all(not m.any() for m in r.masks("a").values())
    assert r.nonfinite_units("b") == [2]
    # dormancy among the finite units: unit 1 (0 of mean 0.5) is dormant, NaN unit 2 is not
    assert r.dormant_units("b") == [1]


def test_errors() -> None:
    r = sample_report()
    with pytest.raises(KeyError, match=r"fc\.act"):
        r.dead_units("nope")
    with pytest.raises(ValueError, match="unknown unit class"):
        r.units("zombie", "fc.act")
    with pytest.raises(ValueError, match="no Site"):
        Report({"x": UnitStats.empty(2)}, {})
    with pytest.raises(ValueError, match="tau"):
        Report({}, {}, tau=-1)


def test_json_round_trip(tmp_path: Path) -> None:
    r = sample_report()
    r.stats["fc.act"].z_max[0] = float("nan")
    text = r.to_json(tmp_path / "r.json")
    data = json.loads(text)  # strict JSON (no NaN literals)
    assert data["schema"] == SCHEMA == "deadrelu.report/1"
    assert data["sites"][0]["units"]["dead"] == [0]
    assert data["sites"][0]["stats"]["z_max"][0] == "nan"
    assert data["meta"] == {"batches": 3}
    for back in (Report.from_json(text), Report.from_json(tmp_path / "r.json")):
        assert back.layers == r.layers
        for name in r.stats:
            for field in UnitStats.REDUCE:
                torch.testing.assert_close(
                    getattr(back.stats[name], field), getattr(r.stats[name], field), equal_nan=True
                )
            assert back.sites[name] == r.sites[name]
    retau = Report.from_json(text, tau=0.0)
    assert retau.dormant_units("fc.act") == [0] and retau.tau == 0.0


def test_from_json_rejects_other_schema() -> None:
    with pytest.raises(ValueError, match="schema"):
        Report.from_json('{"schema": "something/2", "sites": []}')


def test_table_and_str() -> None:
    r = sample_report()
    table = r.table()
    assert isinstance(table, Table) and table.row_count == 3
    text = str(r)
    assert "fc.act" in text and "conv.elu" in text and "3/9 units dead" in text
    assert "dead=3" in repr(r)


def test_counts_only_statistics_show_unknown_columns() -> None:
    s = UnitStats.empty(2, detail=False)
    s.update(torch.tensor([[1.0, -1.0]]), torch.tensor([[1.0, 0.0]]), 1)
    r = Report({"a:gelu": s}, {"a:gelu": site("a:gelu", "gelu")})
    assert r.dead_units("a:gelu") == [1] and r.saturated_units("a:gelu") == []
    cells = [c.strip() for c in str(r).splitlines()[-2].split("│")[1:-1]]
    assert cells[6:8] == ["-", "0"]  # saturated unknown (no z range), non-finite counted
    assert Report.from_json(r.to_json()).stats["a:gelu"].detail == "counts"


def test_plot_and_history(tmp_path: Path) -> None:
    r = sample_report()
    path = r.plot(tmp_path / "dead.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    hist = plot_history(
        [0, 10, 20],
        {"fc.act": [0.0, 0.1, 0.25], "conv.elu": [0.0, float("nan"), 0.5]},
        tmp_path / "hist.png",
        title="dead fraction",
    )
    assert hist.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="one value per step"):
        plot_history([0, 1], {"a": [0.0]}, tmp_path / "bad.png")


LONG = ["encoder.block.0.layer.1.DenseReluDense.act", "encoder.block.1.layer.1.DenseReluDense.act"]


def _long_report() -> Report:
    stats = {n: make_stats([0, 3, 5, 10], [0.0, 1.0, 1.0, 1.0], positions=10) for n in LONG}
    return Report(stats, {n: site(n) for n in LONG})


def _render(r: Report, width: int) -> str:
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, color_system=None).print(r.table(width=width))
    return buf.getvalue()


@pytest.mark.parametrize("width", [200, 100, 70, 40, 30])
def test_table_never_cuts_a_site_name(width: int) -> None:
    text = _render(_long_report(), width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    # the site column, read top to bottom, holds both names whole (folded if need be)
    first_cells = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]
    assert "".join(first_cells) == "".join(LONG)
    if width >= 70:
        assert all(name in text for name in LONG)  # columns were dropped instead
    if width < 160:
        assert "left out to fit" in text


def test_wide_table_keeps_every_column() -> None:
    text = _render(_long_report(), 200)
    for header in ("activation", "dormant (τ=0.025)", "rarely active", "non-finite", "active %"):
        assert header in text
    assert "left out" not in text


def test_str_follows_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    text = str(_long_report())
    assert max(len(line) for line in text.splitlines()) <= 50 and "…" not in text
