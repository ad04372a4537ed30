"""The HTML scan report: content from a Report / Monitor with dead units by construction,
self-contained, and rendered by headless Chromium (images decoded, tables visible, nothing
wider than the viewport)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import deadrelu as dr
from deadrelu.scan_html import render_html
from models import DeadMLP

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
CHROMIUM_FLAGS += ["--disable-background-networking", "--disable-component-update"]
CHROMIUM_FLAGS += ["--hide-scrollbars", "--disable-sync"]


def _summary_sites(page: str) -> list[str]:
    table = page[page.index('id="summary-table"') :]
    table = table[: table.index("</table>")]
    return re.findall(r'<tr(?: class="bad")?><td class="name">([^<]*)</td>', table)


def test_report_page_lists_worst_sites_first_with_causes() -> None:
    model = DeadMLP(dead1=(1,), dead2=(0, 3, 7))  # relu1: 1/16 dead, relu2: 3/12 dead
    data = model.make_batches()
    report = dr.scan(model, data)
    expl = dr.explain(model, report)
    page = render_html(report, explanation=expl, title="tiny <mlp>")
    assert _summary_sites(page) == ["relu2", "relu1"]  # 25 % before 6.25 %
    assert "<h1>tiny &lt;mlp&gt;</h1>" in page  # escaped
    assert page.count('class="bad"') == 4  # both sites, in the summary and frequency tables
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page
    causes = page[page.index('id="causes"') :]
    rows = re.findall(r'<td class="name">(relu\d)</td><td class="num">(\d+)</td>', causes)
    assert sorted(rows) == [("relu1", "1"), ("relu2", "0"), ("relu2", "3"), ("relu2", "7")]
    assert render_html(report) == render_html(report)  # deterministic
    assert 'id="causes"' not in render_html(report)


def _frequency_rows(page: str) -> dict[str, list[str]]:
    table = page[page.index('id="frequency-table"') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr(?: class=\"bad\")?>(.*?)</tr>", table)
    cells = [re.findall(r"<td[^>]*>([^<]*)</td>", r) for r in rows]
    return {c[0]: c[1:] for c in cells if c}


def test_activation_frequency_section_counts_killed_units_in_the_zero_bin() -> None:
    """Bias -1000 units never fire (bin "0"), every other unit of the test MLP fires on
    every position (the top bin), in running order, with the fractions per site."""
    model = DeadMLP(dead1=(1,), dead2=(0, 3, 7))
    page = render_html(dr.scan(model, model.make_batches(n=2)))
    assert 'id="frequency"' in page and "activation frequency histogram per site" in page
    head = page[page.index('id="frequency-table"') :]
    head = head[: head.index("</thead>")]
    labels = re.findall(r"<th>([^<]*)</th>", head)
    assert labels[:5] == ["site", "units", "positions", "dead %", "rarely active %"]
    decades = [f"1e-{k}" for k in range(8, 0, -1)]
    assert labels[5:] == ["0", "&lt;1e-8", *decades]
    rows = _frequency_rows(page)
    assert list(rows) == ["relu1", "relu2"]  # running order, not worst first
    assert rows["relu1"] == ["16", "64", "6.25", "6.25", "1", *["0"] * 8, "15"]
    assert rows["relu2"] == ["12", "64", "25", "25", "3", *["0"] * 8, "9"]


def test_monitor_page_has_the_history(tmp_path: Path) -> None:
    model = DeadMLP()
    data = model.make_batches(n=6)
    with dr.Monitor(model, every=1, window=3, detail="range") as mon:
        for x in data:
            model(x)
            mon.step()
    path = mon.to_html(tmp_path / "deep" / "mon.html")
    page = path.read_text()
    assert 'id="history"' in page and "dead over the last 3 steps" in page
    assert _summary_sites(page) == ["relu1", "relu2"]  # 2/16 dead before 1/12
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 5
    report_page = dr.scan(model, data).to_html(tmp_path / "r.html").read_text()
    assert 'id="history"' not in report_page


def test_counts_only_statistics_say_the_range_is_missing() -> None:
    model = DeadMLP()
    page = render_html(dr.scan(model, model.make_batches(), detail="counts"))
    assert "No z range" in page
    assert len(re.findall(r"<img ", page)) == 3  # bars, depth, frequency (counts suffice)


class _LongNames(nn.Module):
    """Sites with very long names, to test that the page never widens."""

    def __init__(self) -> None:
        super().__init__()
        name = "an_extremely_long_module_name_that_keeps_going_" * 3
        self.body = nn.Sequential()
        for i in range(30):
            self.body.add_module(f"{name}{i}", nn.Sequential(nn.Linear(8, 8), nn.ReLU()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.body:
            x = block(x)
        return x


def _chromium_or_skip() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (make browser, or apt-get install chromium)")


@pytest.mark.parametrize("width", [1280, 700])
def test_renders_in_headless_chromium(tmp_path: Path, width: int) -> None:
    exe = _chromium_or_skip()
    model = _LongNames()
    report = dr.scan(model, torch.randn(4, 8))
    path = report.to_html(tmp_path / "scan.html", explanation=dr.explain(model, report))
    run = subprocess.run(
        [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--window-size={width},1000",
            "--virtual-time-budget=10000",
            "--dump-dom",
            path.resolve().as_uri() + "#all",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    body = re.search(r"<body[^>]*>", run.stdout)
    assert body, run.stderr[-2000:]
    attrs = dict(re.findall(r'(data-[\w-]+)="([^"]*)"', body.group(0)))
    assert attrs["data-images-loaded"] == "4/4"
    shown, total = attrs["data-tables-visible"].split("/")
    assert shown == total and int(total) >= 4  # summary, causes (2), settings
    assert attrs["data-too-wide"] == "0", attrs.get("data-too-wide-list")
