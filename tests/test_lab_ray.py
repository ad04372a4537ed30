"""The lab's executors: pieces merged in run order whatever order they finish in (no Ray
needed), an experiment declared in arms run as one piece per arm and assembled in the arms'
order into the unsplit experiment's result, and a local Ray instance (num_cpus=2) giving
results.json byte-identical to the local executor's on the tiny preset (E4 split in arms),
with a failing piece or arm reported like a local one.

What is compared: ``results.json`` byte for byte, after the output directory (the one
config value that differs between two runs, ``config.out``) is replaced by ``OUT``; and the
figure files byte for byte, except the timing-based experiments' (E9 plots wall-clock
times). ``timings.json`` and ``index.html`` name the executor and are not compared.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import deadrelu.lab.core as core
from deadrelu.lab.core import (
    Arm,
    ClaimVerdict,
    Experiment,
    Judgement,
    LabConfig,
    SeedIndex,
    Sweep,
    sweep_from_arms,
)
from deadrelu.lab.executors import (
    Executor,
    ExecutorError,
    LocalExecutor,
    RayExecutor,
    in_order,
    make_executor,
)
from deadrelu.lab.runner import (
    Piece,
    PieceResult,
    _task_failed,
    failed,
    known_ids,
    run_experiment,
    run_lab,
    split_pieces,
)

# --------------------------------------------------------------------------------------
# Test experiments (module level: a Ray worker gets them pickled by value)
# --------------------------------------------------------------------------------------


def _sweep(cfg: LabConfig) -> Sweep:
    n = cfg.n_seeds
    return Sweep({"x": [s * s for s in range(n)], "n": n}, n, {"zz_s": 0.5})


def _judge(sweep: Sweep, seeds: SeedIndex) -> Judgement:
    xs = sweep.numbers["x"] if seeds is None else [sweep.numbers["x"][i] for i in seeds]
    verdict = "supported" if sum(xs) > 0 else "not supported"
    return Judgement({"C11": ClaimVerdict(verdict, "sum of squares > 0", f"sum {sum(xs)}")})


def _figure(cfg: LabConfig, sweep: Sweep, judgement: Judgement) -> list[str]:
    cfg.figures_dir.mkdir(parents=True, exist_ok=True)
    payload = bytes(range(256)) + json.dumps(sweep.numbers).encode()
    (cfg.figures_dir / "e90.bin").write_bytes(payload)
    return ["figures/e90.bin"]


def _failing_sweep(cfg: LabConfig) -> Sweep:
    raise RuntimeError("boom in the test sweep")


def _crashing_sweep(cfg: LabConfig) -> Sweep:
    os._exit(3)  # the worker process dies: no Python exception to catch


#: The arms of the split test experiment: arm ``k`` gives ``[100 k + s for each seed s]``.
N_ARMS = 4
#: The values every ``_assemble`` call got (the test reads and clears it).
assembled: list[list[Any]] = []


def _arm_value(cfg: LabConfig, k: int, fail: bool = False) -> list[int]:
    if fail:
        raise RuntimeError(f"boom in arm {k}")
    return [100 * k + s for s in range(cfg.n_seeds)]


def _arms(cfg: LabConfig) -> list[Arm]:
    return [Arm(f"arm {k}", partial(_arm_value, cfg, k)) for k in range(N_ARMS)]


def _arms_one_failing(cfg: LabConfig) -> list[Arm]:
    return [Arm(f"arm {k}", partial(_arm_value, cfg, k, k == 2)) for k in range(N_ARMS)]


def _assemble(cfg: LabConfig, values: list[Any]) -> Sweep:
    """Per seed s: the arms' values in the order given, so a reordering shows."""
    assembled.append(values)
    n = cfg.n_seeds
    return Sweep(
        {
            "x": [s * s for s in range(n)],
            "n": n,
            "per_seed": [[v[s] for v in values] for s in range(n)],
        },
        n,
    )


def _split_sweep(cfg: LabConfig) -> Sweep:
    return sweep_from_arms(cfg, _arms, _assemble)


def _split_exp(exp_id: str, arms: Callable[[LabConfig], list[Arm]] = _arms) -> Experiment:
    return _exp(exp_id, sweep=_split_sweep, arms=arms, assemble=_assemble, figure=_figure)


def _exp(exp_id: str, sweep: Callable[[LabConfig], Sweep] = _sweep, **kw: Any) -> Experiment:
    return Experiment(
        id=exp_id,
        claims=("C11",),
        title=f"title {exp_id}",
        question="q?",
        method="n = {n}",
        sweep=sweep,
        judge=_judge,
        resamples=20,
        **kw,
    )


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Experiment]]:
    """A registry the test may add to; the real one is restored afterwards."""
    known_ids()
    monkeypatch.setattr(core, "REGISTRY", dict(core.REGISTRY))
    import deadrelu.lab.runner as runner

    monkeypatch.setattr(runner, "REGISTRY", core.REGISTRY)
    yield core.REGISTRY


def _results_json(out: Path) -> str:
    return (out / "results.json").read_text().replace(out.as_posix(), "OUT")


# --------------------------------------------------------------------------------------
# Splitting and merging, without Ray
# --------------------------------------------------------------------------------------


def test_in_order_puts_results_back_in_item_order() -> None:
    done = [(i, f"r{i}") for i in range(7)]
    random.Random(0).shuffle(done)
    assert in_order(done, 7) == [f"r{i}" for i in range(7)]
    with pytest.raises(ValueError, match=r"missing \[2\]"):
        in_order([(0, "a"), (1, "b")], 3)
    with pytest.raises(ValueError, match=r"repeated \[1\]"):
        in_order([(0, "a"), (1, "b"), (1, "b")], 2)
    with pytest.raises(ValueError, match=r"out of range \[5\]"):
        in_order([(0, "a"), (5, "b")], 1)


def test_one_piece_per_experiment_in_run_order(registry: dict[str, Experiment]) -> None:
    core.register(_exp("E91"))
    core.register(_exp("E90"))
    cfg = LabConfig("tiny")
    pieces = split_pieces(["L1", "E90", "E91"], cfg)
    assert [p.exp.id for p in pieces] == ["L1", "E90", "E91"]
    assert all(p.cfg is cfg for p in pieces)
    assert pieces[1].exp is registry["E90"]


def test_an_experiment_with_arms_is_one_piece_per_arm(registry: dict[str, Experiment]) -> None:
    core.register(_exp("E90"))
    core.register(_split_exp("E91"))
    cfg = LabConfig("tiny", seeds=3)
    pieces = split_pieces(["E90", "E91", "E4"], cfg)
    labels = [p.label for p in pieces]
    assert labels[:5] == [
        "E90 title E90",
        "E91 · arm 0",
        "E91 · arm 1",
        "E91 · arm 2",
        "E91 · arm 3",
    ]
    e4_arms = registry["E4"].arms
    assert e4_arms is not None
    e4 = [p for p in pieces if p.exp.id == "E4"]
    assert [p.label for p in e4] == [f"E4 · {a.name}" for a in e4_arms(cfg)]
    assert len(e4) > 1
    assert all(p.arm is not None for p in e4)
    with pytest.raises(ValueError, match="both arms and assemble"):
        _exp("E93", arms=_arms)
    # arms(cfg) that raises or gives none: one piece (its sweep fails or runs unsplit)
    core.register(_split_exp("E93", arms=lambda cfg: 1 / 0))
    core.register(_split_exp("E94", arms=lambda cfg: []))
    assert [(p.exp.id, p.arm) for p in split_pieces(["E93", "E94"], cfg)] == [
        ("E93", None),
        ("E94", None),
    ]
    core.register(_split_exp("E95", arms=lambda cfg: _arms(cfg)[:1] * 2))
    with pytest.raises(ValueError, match="repeated arm names"):
        split_pieces(["E95"], cfg)


def test_arms_are_assembled_in_declared_order_whatever_order_they_finish(
    tmp_path: Path, registry: dict[str, Experiment], capsys: pytest.CaptureFixture[str]
) -> None:
    """Arms finishing last first give the sweep of the unsplit experiment, assembled once;
    an arm that raises is its experiment's failure (no assembly), the run goes on."""
    core.register(_split_exp("E90"))
    core.register(_split_exp("E91", arms=_arms_one_failing))
    core.register(_exp("E92"))
    cfg = LabConfig("tiny", seeds=3, out=tmp_path / "rev")
    assembled.clear()
    ex = _Reversed()
    results = run_lab(cfg, only="E90,E91,E92", progress=True, executor=ex)
    n_pieces = 2 * N_ARMS + 1
    assert ex.finished == list(reversed(range(n_pieces)))
    # assembled once (E91 never: its arm 2 failed), with the values in the arms' order
    assert assembled == [[[100 * k + s for s in range(3)] for k in range(N_ARMS)]]
    ok, bad, plain = results
    assert ok.numbers["per_seed"] == [[s, 100 + s, 200 + s, 300 + s] for s in range(3)]
    # the same result as the unsplit experiment run in one go
    whole = run_experiment(replace(registry["E90"], arms=None, assemble=None), cfg)
    assert whole.to_dict(include_timings=False) == ok.to_dict(include_timings=False)
    assert set(ok.timings["arms_s"]) == {f"arm {k}" for k in range(N_ARMS)}
    # the failing arm is the experiment's error, with the arm's traceback
    assert failed(results) == [bad] and bad.id == "E91"
    assert bad.summary == "FAILED: arm 'arm 2' failed: RuntimeError: boom in arm 2"
    assert "_arm_value" in bad.caveats[0]
    assert plain.verdict == "supported"
    # progress counts the pieces and prints one line per experiment once its arms are in
    err = capsys.readouterr().err
    assert f"{n_pieces} pieces of 3 experiments on reversed (test)" in err
    assert f"{n_pieces + 1}/{n_pieces + 1}" in err
    lines = [ln.strip().split(":")[0] for ln in err.splitlines() if ln.startswith("  ")]
    assert [x for x in lines if x in {"E90", "E91", "E92"}] == ["E92", "E91", "E90"]
    # the local executor runs the same pieces in order: the same bytes
    local = run_lab(replace(cfg, out=tmp_path / "local"), only="E90,E91,E92", progress=False)
    assert [r.id for r in local] == ["E90", "E91", "E92"]
    assert _results_json(tmp_path / "local") == _results_json(tmp_path / "rev")
    assert (tmp_path / "local" / "figures" / "e90.bin").read_bytes() == (
        tmp_path / "rev" / "figures" / "e90.bin"
    ).read_bytes()


class _Reversed(Executor[Piece, PieceResult]):
    """Runs the pieces last first, as a remote executor without a shared filesystem would
    finish them in some other order."""

    name = "reversed"
    shares_filesystem = False

    def __init__(self) -> None:
        self.finished: list[int] = []

    def describe(self) -> str:
        return "reversed (test)"

    def run(
        self,
        work: Callable[[Piece], PieceResult],
        items: Sequence[Piece],
        *,
        on_done: Callable[[int, PieceResult], None] | None = None,
        on_error: Callable[[Piece, BaseException, str], PieceResult] | None = None,
        gpu: bool = False,
    ) -> list[PieceResult]:
        done = []
        for i in reversed(range(len(items))):
            result = work(items[i])
            done.append((i, result))
            self.finished.append(i)
            if on_done is not None:
                on_done(i, result)
        return in_order(done, len(items))


def test_pieces_finishing_in_any_order_give_the_local_bytes(
    tmp_path: Path, registry: dict[str, Experiment], capsys: pytest.CaptureFixture[str]
) -> None:
    core.register(_exp("E90", figure=_figure))
    core.register(_exp("E91", verdict_source="timings"))
    core.register(_exp("E92", sweep=_failing_sweep))
    only = "L1,E90,E91,E92"
    local = run_lab(LabConfig("tiny", out=tmp_path / "local"), only=only, progress=False)
    ex = _Reversed()
    other = run_lab(
        LabConfig("tiny", out=tmp_path / "other"), only=only, progress=True, executor=ex
    )
    assert ex.finished == [3, 2, 1, 0]
    assert [r.id for r in other] == [r.id for r in local] == ["L1", "E90", "E91", "E92"]
    assert _results_json(tmp_path / "local") == _results_json(tmp_path / "other")
    # the figure was written in a private directory and shipped into out/figures
    fig = tmp_path / "other" / "figures" / "e90.bin"
    assert fig.read_bytes() == (tmp_path / "local" / "figures" / "e90.bin").read_bytes()
    assert fig.read_bytes()[:256] == bytes(range(256))
    # the failure is the experiment's own error, with its traceback
    (bad,) = failed(other)
    assert bad.id == "E92" and "RuntimeError: boom in the test sweep" in bad.summary
    assert "_failing_sweep" in bad.caveats[0]
    # the executor is named in timings.json and the HTML, not in results.json
    timings = json.loads((tmp_path / "other" / "timings.json").read_text())
    assert timings["executor"] == "reversed (test)"
    assert json.loads((tmp_path / "local" / "timings.json").read_text())["executor"] == (
        "local (this process)"
    )
    assert "reversed (test)" in (tmp_path / "other" / "index.html").read_text()
    assert "reversed" not in (tmp_path / "other" / "results.json").read_text()
    # progress: one line per finished piece, in the order they finished
    err = capsys.readouterr().err
    lines = [ln.strip().split(":")[0] for ln in err.splitlines() if ln.startswith("  ")]
    assert [x for x in lines if x in {"L1", "E90", "E91", "E92"}] == ["E92", "E91", "E90", "L1"]


def test_a_task_that_failed_outside_the_experiment_is_a_failed_result() -> None:
    class TaskError(Exception):
        """Shaped like ray.exceptions.RayTaskError: the cause and the remote traceback."""

        def __init__(self, cause: BaseException, traceback_str: str) -> None:
            super().__init__("a wall of text from the cluster")
            self.cause = cause
            self.traceback_str = traceback_str

    exp = _exp("E90")
    piece = Piece(exp, LabConfig("tiny", seeds=3))
    exc = TaskError(ModuleNotFoundError("No module named 'deadrelu'"), "remote tb")
    got = _task_failed(piece, exc, "Traceback: remote frames")
    r = got.result
    assert r is not None
    assert failed([r]) == [r] and r.verdict == "n/a"
    assert r.summary == (
        "FAILED: the remote task running E90 failed: ModuleNotFoundError: No module named "
        "'deadrelu'"
    )
    assert r.caveats == ["Traceback: remote frames"]
    assert "wall of text" not in json.dumps(r.to_dict())
    assert r.claim_verdicts["C11"]["n_seeds"] == 3
    arm = Arm("arm 1", partial(_arm_value, piece.cfg, 1))
    r = _task_failed(replace(piece, arm=arm), exc, "tb").result
    assert r is not None and r.summary.startswith(
        "FAILED: the remote task running E90 (arm 'arm 1') failed: ModuleNotFoundError"
    )


def test_executor_choice_errors() -> None:
    assert isinstance(make_executor("local"), LocalExecutor)
    assert isinstance(make_executor("ray", address="auto"), RayExecutor)
    with pytest.raises(ValueError, match="choose one of local, ray"):
        make_executor("dask")
    with pytest.raises(ValueError, match="for --executor ray"):
        make_executor("local", address="auto")
    with pytest.raises(ValueError, match="drop --num-cpus or --address"):
        make_executor("ray", address="auto", num_cpus=2)


def test_an_address_nobody_answers_on_fails_fast() -> None:
    import socket

    from deadrelu.lab.executors import _check_reachable

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ExecutorError, match=f"nothing answers on 127.0.0.1:{port}"):
            _check_reachable(address, timeout=2.0)
    _check_reachable("auto")  # not a host:port: left to Ray


def _parse(argv: list[str]) -> Any:
    import argparse

    from deadrelu.lab.command import add_lab_parser

    parser = argparse.ArgumentParser(prog="deadrelu")
    add_lab_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_command_without_ray_installed_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = _parse(["lab", "--preset", "tiny", "--only", "L1", "--executor", "ray"])
    args.out = tmp_path / "out"
    assert args.func(args) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "pip install 'deadrelu[ray]'" in err
    assert not (tmp_path / "out").exists()  # nothing ran
    with pytest.raises(ExecutorError, match=r"deadrelu\[ray\]"):
        run_lab(LabConfig("tiny", out=tmp_path / "api"), only="L1", executor="ray")


def test_command_rejects_ray_options_for_the_local_executor(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = _parse(["lab", "--address", "auto", "--out", "unused"])
    assert args.executor == "local" and args.func(args) == 2
    assert "--executor ray" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# A local Ray instance
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    """One local Ray instance (2 CPUs) for the module; the executors use it as it is."""
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed (pip install 'deadrelu[ray]'); Ray tests skipped")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the test experiments travel by value: a Ray worker cannot import this test module
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


def test_ray_run_of_the_tiny_preset_is_byte_identical_to_the_local_run(
    tmp_path: Path, registry: dict[str, Experiment], ray_instance: Any
) -> None:
    """Every experiment of the tiny preset (on the synthetic dataset, which is generated in
    milliseconds in each of the three processes; E4 as one Ray task per arm), plus one that
    fails and one whose arm fails."""
    core.register(_exp("E92", sweep=_failing_sweep))
    core.register(_split_exp("E93", arms=_arms_one_failing))
    ids = known_ids()
    ex = RayExecutor()

    def config(name: str) -> LabConfig:
        return LabConfig("tiny", out=tmp_path / name, dataset="synthetic")

    # one after the other: a split experiment is assembled and judged in this process
    # (global RNG seeded per experiment), so two runs at once here would race on it
    local = run_lab(config("local"), progress=False)
    remote = run_lab(config("ray"), progress=False, executor=ex)
    assert ray_instance.is_initialized()  # a Ray it did not start is left running
    assert [r.id for r in remote] == [r.id for r in local] == ids
    assert _results_json(tmp_path / "local") == _results_json(tmp_path / "ray")
    # E4 ran split, one task per arm
    e4_arms = registry["E4"].arms
    assert e4_arms is not None and len(e4_arms(config("ray"))) > 1
    (e4,) = (r for r in remote if r.id == "E4")
    assert list(e4.timings["arms_s"]) == [a.name for a in e4_arms(config("ray"))]
    # every figure, byte for byte, but the timing-based ones (wall-clock times)
    timed = {i for i in ids if registry[i].verdict_source == "timings"}
    figs = {r.id: r.figures for r in local}
    assert figs == {r.id: r.figures for r in remote} and sum(map(len, figs.values())) >= 10
    for exp_id, names in figs.items():
        for name in names:
            a, b = (tmp_path / run / name for run in ("local", "ray"))
            assert b.is_file(), name
            if exp_id not in timed:
                assert a.read_bytes() == b.read_bytes(), name
    # the failing experiment and arm: their own error and traceback, from the worker
    bad, bad_arm = failed(remote)
    assert bad.id == "E92" and bad.summary == "FAILED: RuntimeError: boom in the test sweep"
    assert "_failing_sweep" in bad.caveats[0] and "site-packages/ray" not in bad.caveats[0]
    assert bad_arm.id == "E93" and "arm 'arm 2' failed: RuntimeError: boom in arm 2" in (
        bad_arm.summary
    )
    assert "_arm_value" in bad_arm.caveats[0]
    assert [r.caveats for r in failed(local)] == [bad.caveats, bad_arm.caveats]
    # the executor is named where identity is not asked for
    timings = json.loads((tmp_path / "ray" / "timings.json").read_text())
    assert timings["executor"] == ex.describe() == "ray (an already initialised Ray, 2 CPUs)"
    assert ex.describe() in (tmp_path / "ray" / "index.html").read_text()


def test_ray_worker_that_dies_is_a_failed_piece_not_a_crash(
    tmp_path: Path, registry: dict[str, Experiment], ray_instance: Any
) -> None:
    core.register(_exp("E90"))
    core.register(_exp("E91", sweep=_crashing_sweep))
    results = run_lab(
        LabConfig("tiny", out=tmp_path),
        only="E90,E91",
        progress=False,
        executor=RayExecutor(max_retries=0),
    )
    assert results[0].verdict == "supported"
    (bad,) = failed(results)
    assert bad.id == "E91"
    assert bad.summary.startswith("FAILED: the Ray task running E91 failed: ")
    assert "died" in bad.summary.lower() or "crash" in bad.summary.lower()
