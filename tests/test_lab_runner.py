"""The runner: the Experiment shape end to end (bootstrap stability, presets, timing-based
verdicts kept out of results.json), old-style experiments through the adapter, one row per
claim (combined verdicts), the live checks, the Markdown table and the ``deadrelu lab``
command."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from deadrelu.lab import core
from deadrelu.lab.claims import claim_rows, markdown_table
from deadrelu.lab.core import (
    ClaimVerdict,
    Experiment,
    Judgement,
    LabConfig,
    SeedIndex,
    Sweep,
)
from deadrelu.lab.runner import (
    SCHEMA,
    claims_table,
    failed,
    known_ids,
    markdown_from_results,
    resolve_only,
    run_experiment,
    run_lab,
    to_jsonable,
)

VERDICTS = {"supported", "not supported", "mixed", "n/a"}


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Experiment]]:
    """A registry the test may add to; the real one is restored afterwards."""
    known_ids()  # imports (registers) the real experiments first
    monkeypatch.setattr(core, "REGISTRY", dict(core.REGISTRY))
    import deadrelu.lab.runner as runner

    monkeypatch.setattr(runner, "REGISTRY", core.REGISTRY)
    yield core.REGISTRY


def _pick(xs: list[Any], seeds: SeedIndex) -> list[Any]:
    return list(xs) if seeds is None else [xs[i] for i in seeds]


def _seed0_judge(sweep: Sweep, seeds: SeedIndex) -> Judgement:
    """Supported exactly when seed 0 is in the sample: a verdict resting on one seed."""
    used = _pick(list(range(sweep.n_seeds)), seeds)
    verdict = "supported" if 0 in used else "not supported"
    return Judgement({"C11": ClaimVerdict(verdict, "seed 0 decides", f"seed 0 in: {0 in used}")})


def _experiment(exp_id: str, judge: Any, n_seeds: int = 5, **kw: Any) -> Experiment:
    def sweep(cfg: LabConfig) -> Sweep:
        return Sweep({"x": list(range(n_seeds)), "n": n_seeds}, n_seeds, {"zz_marker_s": 1.5})

    base: dict[str, Any] = {
        "id": exp_id,
        "claims": ("C11",),
        "title": f"title {exp_id}",
        "question": "q?",
        "method": "n = {n} seeds, {missing} stays",
        "sweep": sweep,
        "judge": judge,
    }
    base.update(kw)
    return Experiment(**base)


def _const_judge(verdict: str, summary: str = "") -> Any:
    def judge(sweep: Sweep, seeds: SeedIndex) -> Judgement:
        return Judgement({"C11": ClaimVerdict(verdict, f"always {verdict}", summary or verdict)})

    return judge


# --------------------------------------------------------------------------------------
# One experiment
# --------------------------------------------------------------------------------------


def test_stability_of_a_verdict_resting_on_one_seed(tmp_path: Path) -> None:
    exp = _experiment("E90", _seed0_judge, n_seeds=5, resamples=400)
    r = run_experiment(exp, LabConfig(preset="tiny", out=tmp_path))
    rec = r.claim_verdicts["C11"]
    assert rec["verdict"] == "supported"
    # a resample of 5 seeds misses seed 0 with probability (4/5)^5 = 0.328
    share = rec["stability"]["share"]
    assert abs(share - (1 - 0.8**5)) < 4 * (0.328 * 0.672 / 400) ** 0.5
    assert rec["stability"]["fragile"] is True and "fragile" in rec["stability"]["why"]
    assert rec["stability"]["counts"]["not supported"] == round((1 - share) * 400)
    assert (rec["preset"], rec["n_seeds"], rec["source"]) == ("tiny", 5, "numbers")
    assert r.method == "n = 5 seeds, {missing} stays"
    again = run_experiment(exp, LabConfig(preset="tiny", out=tmp_path))
    assert again.claim_verdicts == r.claim_verdicts  # fixed bootstrap seed


def test_a_stable_verdict_and_a_deterministic_check(tmp_path: Path) -> None:
    cfg = LabConfig(preset="tiny", out=tmp_path)
    r = run_experiment(_experiment("E90", _const_judge("mixed")), cfg)
    assert r.claim_verdicts["C11"]["stability"]["share"] == 1.0
    assert r.claim_verdicts["C11"]["stability"]["fragile"] is False
    one = run_experiment(_experiment("E91", _const_judge("supported"), n_seeds=1), cfg)
    assert one.claim_verdicts["C11"]["stability"] is None  # nothing to resample


def test_judge_failing_on_a_resample_counts_as_a_different_verdict(tmp_path: Path) -> None:
    def judge(sweep: Sweep, seeds: SeedIndex) -> Judgement:
        if seeds is not None and len(set(seeds)) < 3:
            raise ValueError("too few distinct seeds")
        return Judgement({"C11": ClaimVerdict("supported", "r", "s")})

    r = run_experiment(_experiment("E90", judge, n_seeds=3), LabConfig("tiny", out=tmp_path))
    stab = r.claim_verdicts["C11"]["stability"]
    # all three distinct in a resample of 3: 3! / 27 = 2/9
    assert stab["counts"]["error"] > stab["counts"]["supported"]
    assert stab["fragile"]


def test_undeclared_claim_and_failing_figure(tmp_path: Path, registry: dict[str, Any]) -> None:
    def bad_judge(sweep: Sweep, seeds: SeedIndex) -> Judgement:
        return Judgement({"C7": ClaimVerdict("supported", "r", "s")})

    def bad_figure(cfg: LabConfig, sweep: Sweep, j: Judgement) -> list[str]:
        raise RuntimeError("no ink")

    core.register(_experiment("E90", bad_judge))
    core.register(_experiment("E91", _const_judge("supported"), figure=bad_figure))
    results = run_lab(LabConfig("tiny", out=tmp_path), only="E90,E91", progress=False)
    assert results[0].verdict == "n/a" and "does not declare" in results[0].summary
    assert results[1].verdict == "supported"
    assert any("no ink" in c for c in results[1].caveats)


# --------------------------------------------------------------------------------------
# A whole run: results.json, timings.json, old-style experiments, one row per claim
# --------------------------------------------------------------------------------------


def _failing_sweep(cfg: LabConfig) -> Sweep:
    raise RuntimeError("boom in the sweep")


def test_run_writes_reproducible_results_and_keeps_timings_apart(
    tmp_path: Path, registry: dict[str, Any]
) -> None:
    core.register(_experiment("E90", _const_judge("supported", "E90 number")))

    def timed_judge(sweep: Sweep, seeds: SeedIndex) -> Judgement:
        verdict = ClaimVerdict("not supported", "always", "E91 time")
        return Judgement({"C11": verdict}, derived={"ratio": sweep.timings["zz_marker_s"]})

    core.register(_experiment("E91", timed_judge, verdict_source="timings"))
    core.register(
        _experiment("E92", _const_judge("supported"), claims=("C4", "C7"), sweep=_failing_sweep)
    )
    outs = []
    for name in ("a", "b"):
        cfg = LabConfig(preset="tiny", out=tmp_path / name)
        results = run_lab(cfg, only="E90,E91,E92,L1", progress=False)
        assert [r.id for r in results] == ["L1", "E90", "E91", "E92"]
        outs.append(cfg.out)
    a, b = ((o / "results.json").read_text() for o in outs)
    assert a.replace(str(outs[0]), "OUT") == b.replace(str(outs[1]), "OUT")
    doc = json.loads(a)
    assert doc["schema"] == SCHEMA == "deadrelu.lab/2"
    exps = doc["experiments"]
    assert "timings" not in exps["E90"] and "zz_marker_s" not in json.dumps(exps)
    # the timing-based verdict is not in results.json, but is in timings.json
    assert exps["E91"]["claim_verdicts"]["C11"]["verdict"] == "n/a"
    assert "timings.json" in exps["E91"]["claim_verdicts"]["C11"]["summary"]
    timing = json.loads((outs[0] / "timings.json").read_text())["experiments"]
    assert timing["E91"]["claim_verdicts"]["C11"]["verdict"] == "not supported"
    # numbers derived from the timings are in timings.json only
    assert exps["E91"]["derived"] == {} and timing["E91"]["derived"] == {"ratio": 1.5}
    assert timing["E90"]["timings"]["zz_marker_s"] == 1.5
    # a failing experiment: the run goes on; each of its claims is n/a with the error
    bad = exps["E92"]["claim_verdicts"]
    assert bad["C4"]["verdict"] == bad["C7"]["verdict"] == "n/a"
    assert "boom in the sweep" in bad["C4"]["summary"] and bad["C7"]["preset"] == "tiny"
    assert failed(results)[0].id == "E92"
    # one row per claim; C11 combines E90 (supported) and E91 (timing-based)
    ordered = [exps[i] for i in doc["order"]]
    rows = {r.claim: r for r in claim_rows(ordered, timing)}
    assert list(rows) == ["C1", "C2", "C4", "C7", "C11"]
    c11 = rows["C11"]
    assert [p.experiment for p in c11.parts] == ["E90", "E91"]
    assert c11.verdict == "mixed"  # supported + not supported
    assert "E90: E90 number" in c11.summary and "E91: E91 time" in c11.summary
    assert "timing-based" in c11.provenance and "tiny" in c11.provenance
    # without timings.json the timing part is n/a and the row is E90's alone
    assert {r.claim: r for r in claim_rows(ordered)}["C11"].verdict == "supported"
    page = (outs[0] / "index.html").read_text()
    assert "timing-based" in page and page.count("<details>") >= 4


def test_one_row_per_claim_in_the_terminal_table(tmp_path: Path) -> None:
    from rich.console import Console

    exps = [
        {"id": "E7", "claims": ["C11"], "verdict": "supported", "summary": "faster by 88 steps"},
        {"id": "E9", "claims": ["C11"], "verdict": "supported", "summary": "ELU 3.2x"},
        {"id": "E2", "claims": ["C4"], "verdict": "mixed", "summary": "bias -3"},
    ]
    rows = claim_rows(exps)
    assert [r.claim for r in rows] == ["C4", "C11"]
    console = Console(record=True, width=200)
    console.print(claims_table(rows))
    text = console.export_text()
    assert text.count(" C11 ") == 1 and "faster by 88 steps" in text and "ELU 3.2x" in text


def test_fragile_rows_are_marked() -> None:
    stab = {"share": 0.7, "resamples": 200, "fragile": True, "why": "supported in 70 %"}
    exp = {
        "id": "E5",
        "claims": ["C9"],
        "claim_verdicts": {
            "C9": {"verdict": "supported", "summary": "s", "stability": stab, "preset": "quick"}
        },
    }
    (row,) = claim_rows([exp])
    assert row.fragile and row.label == "supported (fragile, 70%)"
    md = markdown_table([row])
    assert "| C9 | Leaky ReLU (0.01): no dying; why 0.01? | supported (fragile, 70%) |" in md


# --------------------------------------------------------------------------------------
# The live checks are experiments of the same shape
# --------------------------------------------------------------------------------------


def test_live_checks_find_the_dead_units_and_match_autograd(tmp_path: Path) -> None:
    known_ids()
    cfg = LabConfig(preset="tiny", out=tmp_path)
    l1 = run_experiment(core.REGISTRY["L1"], cfg)
    assert l1.numbers["dead_found"] == [2, 4] and l1.numbers["dead_found_scan"] == [2, 4]
    assert l1.claim_verdicts["C1"]["verdict"] == l1.claim_verdicts["C2"]["verdict"]
    assert l1.claim_verdicts["C2"]["verdict"] == "supported"
    l14 = run_experiment(core.REGISTRY["L14"], cfg)
    rows = {r[0]: r for r in l14.numbers["table"]["rows"]}
    from deadrelu.activations import names

    assert len(rows) == len(names())
    assert rows["relu"][2] == rows["relu"][3] == 0.0 and rows["relu"][4] == 0.0
    assert l14.claim_verdicts["C14"]["verdict"] == "supported"
    assert run_experiment(core.REGISTRY["L13"], cfg).claim_verdicts["C13"]["verdict"] == "n/a"


@pytest.mark.parametrize(
    ("f0", "auto0", "err", "verdict"),
    [
        (0.25, 0.25, 1e-15, "supported"),  # exact
        (1 / 6, 0.1666666716337204, 4.97e-9, "supported"),  # torch's float32 constant 1/6
        (0.25, 0.25, 1e-3, "not supported"),  # a wrong formula somewhere on the grid
        (0.0, 1.0, 0.0, "not supported"),  # a wrong convention at z = 0
    ],
)
def test_derivative_check_on_constructed_rows(
    f0: float, auto0: float, err: float, verdict: str
) -> None:
    from deadrelu.lab.experiments import live_checks

    rows = [["relu", "f", 0.0, 0.0, 0.0], ["x", "f", f0, auto0, err]]
    sweep = Sweep({"table": {"columns": [], "rows": rows}}, n_seeds=1)
    cv = live_checks.DERIVATIVES.judge(sweep, None).claims["C14"]
    assert cv.verdict == verdict
    assert cv.evidence["status"]["relu"] == "exact"


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def test_to_jsonable() -> None:
    import numpy as np

    value = {
        "t": torch.tensor([1.0, float("nan")]),
        "a": np.arange(3),
        "s": np.float32(0.5),
        "p": Path("x/y"),
        1: (float("inf"), None, True),
    }
    out = to_jsonable(value)
    assert out == {"t": [1.0, None], "a": [0, 1, 2], "s": 0.5, "p": "x/y", "1": [None, None, True]}
    json.dumps(out, allow_nan=False)


def test_resolve_only_errors_name_the_known_ids() -> None:
    assert resolve_only("e9, E8, l1") == ["L1", "E8", "E9"]
    with pytest.raises(ValueError, match=r"unknown experiment id\(s\) E99; known: .*E8"):
        resolve_only("E8,E99")
    with pytest.raises(ValueError, match="empty"):
        resolve_only(" , ")


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    from deadrelu.lab.command import add_lab_parser

    parser = argparse.ArgumentParser(prog="deadrelu")
    add_lab_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_command_defaults() -> None:
    args = _parse(["lab"])
    assert (args.preset, args.only, args.seeds, args.out, args.device, args.markdown) == (
        "quick",
        None,
        None,
        Path("report"),
        "cpu",
        None,
    )
    assert (args.executor, args.address, args.num_cpus) == ("local", None, None)
    ray_args = _parse(["lab", "--executor", "ray", "--address", "auto"])
    assert (ray_args.executor, ray_args.address) == ("ray", "auto")
    with pytest.raises(SystemExit):
        _parse(["lab", "--executor", "dask"])
    assert _parse(["lab", "--markdown"]).markdown == ""
    assert _parse(["lab", "--markdown", "x/results.json"]).markdown == "x/results.json"


def test_command_rejects_unknown_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["lab", "--only", "E8,E42", "--out", "unused"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "E42" in err and "known" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_command_rejects_cuda_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["lab", "--device", "cuda", "--out", "unused"])
    assert args.func(args) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_command_runs_prints_the_table_and_the_markdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["lab", "--preset", "tiny", "--only", "L1,L14", "--seeds", "2", "--out", str(tmp_path)]
    args = _parse(argv)
    args.no_progress = True
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "C1" in out and "C14" in out and "preset tiny" in out
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["config"]["n_seeds"] == 2
    # --markdown: the table of that run, from its results.json, nothing run
    md_args = _parse(["lab", "--markdown", "--out", str(tmp_path)])
    assert md_args.func(md_args) == 0
    md = capsys.readouterr().out
    assert md == markdown_from_results(tmp_path / "results.json")
    lines = md.splitlines()
    assert lines[0].startswith("| claim |") and len(lines) == 2 + 3  # C1, C2, C14
    assert lines[2].startswith("| C1 | a dead unit outputs 0 for any input | supported |")


def test_markdown_of_a_missing_or_foreign_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parse(["lab", "--markdown", str(tmp_path / "nope.json")])
    assert args.func(args) == 2
    (tmp_path / "other.json").write_text('{"schema": "something/1"}')
    args = _parse(["lab", "--markdown", str(tmp_path / "other.json")])
    assert args.func(args) == 2
    assert "not a deadrelu lab results file" in capsys.readouterr().err.replace("\n", "")
