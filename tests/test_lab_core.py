"""The lab's core helpers: ids and order of the registry, the bar chart that tells a zero
from a missing value."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from deadrelu.lab.core import LabConfig, _order, annotate, bars, new_figure, save_figure


def test_ids_sort_live_checks_first_then_by_number() -> None:
    ids = ["E10", "L14", "E2", "L1", "E1"]
    assert sorted(ids, key=_order) == ["L1", "L14", "E1", "E2", "E10"]
    with pytest.raises(ValueError, match="must look like"):
        _order("X3")


def test_bars_draw_zero_and_missing_differently(tmp_path: Path) -> None:
    fig, axes = new_figure()
    ax = axes[0][0]
    bars(
        ax,
        [0, 1, 2, 3],
        [0.5, 0.0, None, math.nan],
        lo=[0.4, 0.0, None, None],
        hi=[0.6, 0.02, None, None],
    )
    annotate(ax, 0, 0.5, "4/5 diverged")
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("no data") == 2 and texts.count("0") == 1 and "4/5 diverged" in texts
    hatched = [p for p in ax.patches if p.get_hatch() == "//"]
    assert len(hatched) == 2 and not any(p.get_fill() for p in hatched)
    stubs = [ln for ln in ax.lines if ln.get_linewidth() == 4]
    assert len(stubs) == 1 and list(stubs[0].get_ydata()) == [0, 0]
    assert all(t.get_fontsize() >= 8 for t in ax.texts)
    cfg = LabConfig(preset="tiny", out=tmp_path)
    assert (tmp_path / save_figure(fig, cfg, "bars.png")).is_file()
