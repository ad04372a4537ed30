"""The HTML report: self-contained, escaped, deterministic, and rendered by headless Chromium.

The browser test needs Chromium (Debian package ``chromium``). The Makefile's test set-up
installs it; when it is missing this test tries ``apt-get install -y chromium`` itself and
skips only if that is impossible (not root, no apt-get, or the install fails).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deadrelu.lab.core import ExperimentResult, LabConfig, new_figure, save_figure
from deadrelu.lab.html import render_html, write_html
from deadrelu.lab.runner import write_outputs

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def _figure(cfg: LabConfig, name: str, color: str) -> str:
    fig, axes = new_figure()
    axes[0][0].plot([0, 1, 2], [0, 1, 4], color=color)
    axes[0][0].set_title(name)
    return save_figure(fig, cfg, name)


def _result(cfg: LabConfig, exp_id: str, claims: tuple[str, ...], **kw: Any) -> ExperimentResult:
    figures = kw.pop("figures", None)
    if figures is None:
        figures = [_figure(cfg, f"{exp_id.lower()}_a.png", "C0")]
    base: dict[str, Any] = {
        "id": exp_id,
        "claims": claims,
        "title": f"title of {exp_id}",
        "question": f"question of {exp_id}?",
        "method": f"method of {exp_id}",
        "numbers": {"acc": {"a": [0.9, 0.91], "b": 0.8}, "rows": [{"x": 1, "y": 2.5}]},
        "verdict": "supported",
        "verdict_rule": f"rule of {exp_id}",
        "summary": f"key number of {exp_id}",
        "figures": figures,
        "caveats": [f"caveat of {exp_id}"],
    }
    base.update(kw)
    return ExperimentResult(**base)


@pytest.fixture()
def cfg(tmp_path: Path) -> LabConfig:
    return LabConfig(preset="tiny", out=tmp_path / "report")


def _dicts(results: list[ExperimentResult]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in results]


def test_figures_are_embedded_as_base64_and_nothing_is_external(cfg: LabConfig) -> None:
    r = _result(cfg, "E6", ("C10",))
    page = render_html(_dicts([r]), cfg.out)
    png = (cfg.out / r.figures[0]).read_bytes()
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<link" not in page  # no external style sheet


def _claim(verdict: str, summary: str, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "verdict": verdict,
        "rule": f"rule for {summary}",
        "summary": summary,
        "evidence": {},
        "stability": {"share": 1.0, "resamples": 200, "fragile": False, "why": "stable"},
        "source": "numbers",
        "preset": "quick",
        "n_seeds": 5,
    }
    rec.update(kw)
    return rec


def test_claims_table_comes_first_one_row_per_claim(cfg: LabConfig) -> None:
    results = [
        _result(cfg, "E7", ("C11",), claim_verdicts={"C11": _claim("supported", "88 steps")}),
        _result(
            cfg,
            "E2",
            ("C4", "C7"),
            claim_verdicts={"C4": _claim("supported", "bias -3"), "C7": _claim("mixed", "0.01")},
        ),
        _result(
            cfg,
            "E9",
            ("C11",),
            claim_verdicts={"C11": _claim("not supported", "ELU 1.0x", source="timings")},
        ),
    ]
    page = render_html(_dicts(results), cfg.out)
    table_at = page.index('id="claims-table"')
    assert table_at < page.index('<section class="exp"')
    body = page[table_at : page.index("</table>", table_at)]
    claims = re.findall(r'<tr><td class="claim">(C\d+)</td>', body)
    assert claims == ["C4", "C7", "C11"]  # C11 once, for E7 and E9
    c11 = body[body.index(">C11<") :]
    assert "88 steps" in c11 and "ELU 1.0x" in c11 and "timing-based" in c11
    assert 'class="badge mix"' in c11  # supported + not supported -> mixed
    assert "combined:" in c11


def test_fragile_verdicts_are_marked_with_why(cfg: LabConfig) -> None:
    stab = {"share": 0.71, "resamples": 200, "fragile": True, "why": "supported in 71 %"}
    r = _result(
        cfg, "E5", ("C9",), claim_verdicts={"C9": _claim("supported", "slope", stability=stab)}
    )
    page = render_html(_dicts([r]), cfg.out)
    table = page[page.index('id="claims-table"') : page.index("</table>")]
    assert "fragile 71%" in table and "supported in 71 %" in table


def test_raw_numbers_start_collapsed_and_tables_scroll(cfg: LabConfig) -> None:
    r = _result(cfg, "E6", ("C10",), derived={"ci": {"lo": 0.1, "hi": 0.2}})
    page = render_html(_dicts([r]), cfg.out)
    section = page[page.index('id="e6"') :]
    assert "<details open" not in page
    assert "<details><summary>all raw numbers (reproducible)</summary>" in section
    assert "<details><summary>derived numbers" in section
    # every top-level table sits in its own scrolling box
    assert page.count('<div class="scroll"><table') == page.count("<table") - page.count(
        '<table class="nested"'
    )


def test_each_experiment_section_has_its_parts(cfg: LabConfig) -> None:
    r = _result(cfg, "E9", ("C11",), verdict="mixed", timings={"seconds": 1.5})
    page = render_html(_dicts([r]), cfg.out)
    section = page[page.index('id="e9"') :]
    for part in ("Verdict", "Caveats"):
        assert f"<h3>{part}</h3>" in section
    assert "<b>Question.</b>" in section and "<b>Method.</b>" in section and "<img" in section
    assert "<details><summary>timings (wall clock" in section
    for text in ("question of E9?", "method of E9", "rule of E9", "caveat of E9"):
        assert text in section
    assert 'class="badge mix"' in section


def test_text_is_escaped(cfg: LabConfig) -> None:
    r = _result(cfg, "E6", ("C10",), question="<script>alert(1)</script> & <b>", figures=[])
    page = render_html(_dicts([r]), cfg.out)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;" in page


def test_missing_figure_warns_and_shows_a_placeholder(cfg: LabConfig) -> None:
    r = _result(cfg, "E6", ("C10",), figures=["figures/nope.png"])
    with pytest.warns(UserWarning, match="nope.png"):
        page = render_html(_dicts([r]), cfg.out)
    assert "<img" not in page
    assert "figure figures/nope.png is missing" in page


def test_render_is_deterministic(cfg: LabConfig) -> None:
    results = _dicts([_result(cfg, "E6", ("C10",)), _result(cfg, "E9", ("C11",))])
    assert render_html(results, cfg.out) == render_html(results, cfg.out)


def test_write_html_creates_the_file(cfg: LabConfig) -> None:
    path = write_html(_dicts([_result(cfg, "E6", ("C10",))]), cfg.out)
    assert path == cfg.out / "index.html"
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# --------------------------------------------------------------------------------------
# Headless Chromium
# --------------------------------------------------------------------------------------


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium_or_skip() -> str:
    found = _find_chromium()
    if found:
        return found
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)
        found = _find_chromium()
        if found:
            return found
    pytest.skip(
        "headless Chromium is not installed and could not be installed here (needs root and "
        "apt-get): run `apt-get install -y chromium` (Debian package 'chromium') and rerun"
    )


def _chromium(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / "chromium-profile"
    return subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_report_renders_in_headless_chromium(cfg: LabConfig, tmp_path: Path) -> None:
    exe = _chromium_or_skip()
    results = [
        _result(cfg, "E6", ("C10",)),
        _result(
            cfg,
            "E8",
            ("C12",),
            verdict="mixed",
            figures=[_figure(cfg, "e8_a.png", "C1"), _figure(cfg, "e8_b.png", "C2")],
        ),
    ]
    paths = write_outputs(results, cfg)
    url = paths["html"].resolve().as_uri()
    n_images = 3
    n_claim_rows = 2  # C10 (E6), C12 (E8)

    dom = _chromium(exe, tmp_path, "--virtual-time-budget=10000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None, dom.stdout[:2000]
    tag = body.group(0)
    assert f'data-images-loaded="{n_images}/{n_images}"' in tag, tag
    assert f'data-claims-rows="{n_claim_rows}"' in tag, tag
    assert 'data-claims-visible="yes"' in tag, tag

    shot = tmp_path / "shot.png"
    run = _chromium(exe, tmp_path, "--window-size=1200,1600", f"--screenshot={shot}", url)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    from PIL import Image, ImageStat

    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.size == (1200, 1600)
        # Not blank: many colours and real contrast over the page and in its top third,
        # where the title and the claims table are.
        assert len(rgb.getcolors(maxcolors=1 << 20) or []) > 50
        assert max(ImageStat.Stat(rgb).stddev) > 10
        top = rgb.crop((0, 0, 1200, 530))
        assert max(ImageStat.Stat(top).stddev) > 10
        # The green 'supported' badge of the claims table is drawn (#1f8a3b).
        greens = sum(
            n
            for n, (r, g, b) in (top.getcolors(maxcolors=1 << 20) or [])
            if abs(r - 0x1F) < 12 and abs(g - 0x8A) < 12 and abs(b - 0x3B) < 12
        )
        assert greens > 100


def test_chromium_check_detects_a_broken_image(cfg: LabConfig, tmp_path: Path) -> None:
    exe = _chromium_or_skip()
    r = _result(cfg, "E6", ("C10",))
    (cfg.out / "figures" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    r.figures.append("figures/broken.png")
    page = write_html(_dicts([r]), cfg.out)
    dom = _chromium(exe, tmp_path, "--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    assert 'data-images-loaded="1/2"' in dom.stdout


def test_report_of_a_real_tiny_run_renders_in_chromium(tmp_path: Path) -> None:
    from deadrelu.lab.runner import run_lab

    exe = _chromium_or_skip()
    cfg = LabConfig(preset="tiny", out=tmp_path / "lab")
    results = run_lab(cfg, only="L1,L13,L14,E8,E9", progress=False)
    n_images = sum(len(r.figures) for r in results)
    assert n_images == 2
    url = (cfg.out / "index.html").resolve().as_uri()
    dom = _chromium(exe, tmp_path, "--virtual-time-budget=10000", "--dump-dom", url)
    assert f'data-images-loaded="{n_images}/{n_images}"' in dom.stdout
    assert 'data-claims-visible="yes"' in dom.stdout
    assert 'data-claims-rows="6"' in dom.stdout  # C1, C2, C11, C12, C13, C14


# --------------------------------------------------------------------------------------
# The page as a reader sees it: 1400 px wide, short when collapsed, never wider than the
# window, no squeezed label column
# --------------------------------------------------------------------------------------


def _wide_result(cfg: LabConfig, k: int) -> ExperimentResult:
    """An experiment as bulky as the real ones: one or two three-panel figures, two claims
    with rules of 600 characters, long caveats, per-seed lists, a 24-column record table,
    nested per-layer dicts and a long unbroken name."""
    figures = []
    for j in range(1 + k % 2):
        fig, axes = new_figure(ncols=3, width=4.4, height=3.6)
        for ax in axes[0]:
            ax.bar(range(8), [0.0, 0.1, 0.3, 0.0, 0.5, 0.2, 0.0, 0.4])
        figures.append(save_figure(fig, cfg, f"e{k}_{j}.png"))
    long_name = "a_rather_long_setting_name_without_spaces_" * 3
    numbers = {
        "per_seed": {f"lr {lr}": [0.123456 * i for i in range(40)] for lr in (0.01, 0.1, 1.0)},
        "records": [{f"column {c}": c * 1.5 + r for c in range(24)} for r in range(6)],
        "per_layer": {
            f"layer {i}": {"dead": [0.1] * 10, "ci": {"lo": 0.0, "hi": 0.2}} for i in range(4)
        },
        long_name: {long_name: long_name},
    }
    claims = (f"C{k}", f"C{k % 16 + 1}")
    summary = "dead 12.0 % [9.1, 15.6] at lr 2.0 vs 0.0 % [0, 0.8] at lr 0.01; " * 2
    verdicts = {c: _claim("mixed", summary, rule="rule " + "y " * 300) for c in claims}
    return _result(
        cfg,
        f"E{k}",
        claims,
        figures=figures,
        numbers=numbers,
        derived={"intervals": numbers["per_layer"], "table": numbers["records"]},
        claim_verdicts=verdicts,
        caveats=["caveat " * 30] * 3,
        timings={"wall": [1.0] * 30},
    )


def test_page_height_width_and_label_columns_at_1400px(cfg: LabConfig, tmp_path: Path) -> None:
    exe = _chromium_or_skip()
    results = [_wide_result(cfg, k) for k in range(1, 16)]  # 12 experiments + 3 live checks
    page = write_html(_dicts(results), cfg.out, meta={"config.preset": "quick"})
    for suffix, limit in (("", 25_000), ("#all", None)):
        url = page.resolve().as_uri() + suffix
        dom = _chromium(
            exe,
            tmp_path,
            "--window-size=1400,1000",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        )
        tag = re.search(r"<body[^>]*>", dom.stdout)
        assert tag is not None, dom.stdout[:2000]
        attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', tag.group(0)))
        assert attrs["data-images-loaded"] == "23/23", attrs
        assert attrs["data-too-wide"] == "0", attrs
        assert attrs["data-squeezed-cells"] == "0", attrs
        if limit is not None:
            assert int(attrs["data-page-height"]) < limit, attrs
    # negative control: the same checks see a squeezed label column and a too-wide block
    bad = page.read_text(encoding="utf-8").replace(
        "<main>",
        '<main><table><tr><th style="width:4px;max-width:4px;white-space:normal;'
        'overflow-wrap:anywhere">squeezedlabel</th></tr></table>'
        '<div style="width:3000px">wide</div>',
        1,
    )
    bad_page = cfg.out / "bad.html"
    bad_page.write_text(bad, encoding="utf-8")
    dom = _chromium(
        exe,
        tmp_path,
        "--window-size=1400,1000",
        "--virtual-time-budget=10000",
        "--dump-dom",
        bad_page.resolve().as_uri(),
    )
    tag = re.search(r"<body[^>]*>", dom.stdout)
    assert tag is not None
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', tag.group(0)))
    assert attrs["data-squeezed-cells"] == "1" and int(attrs["data-too-wide"]) >= 1, attrs
    shot = tmp_path / "shot1400.png"
    run = _chromium(
        exe, tmp_path, "--window-size=1400,2400", f"--screenshot={shot}", page.resolve().as_uri()
    )
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
