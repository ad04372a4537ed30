"""Run the lab: every registered experiment and live check, ``results.json``, ``index.html``.

:func:`run_lab` runs the experiments of :data:`deadrelu.lab.core.REGISTRY` (the live checks
``L1``, ``L13``, ``L14`` first, then ``E1``, ``E2``, ...). For each
:class:`~deadrelu.lab.core.Experiment` it calls ``sweep(cfg)`` once, ``judge(sweep, None)``
for the verdicts, ``judge(sweep, idx)`` on :attr:`~deadrelu.lab.core.Experiment.resamples`
bootstrap resamples of the seeds (fixed generator seed :data:`BOOTSTRAP_SEED`, so the
stability is reproducible) and ``figure(cfg, sweep, judgement)``. Each claim's verdict gets
its *stability*, the share of resamples giving the same verdict; below 90 % it is shown as
fragile, with why. Every verdict records the preset and the number of seeds it came from.

Outputs in ``cfg.out``:

* ``results.json`` -- schema ``"deadrelu.lab/2"``: the configuration, library versions and
  one entry per experiment (``ExperimentResult.to_dict`` without ``timings``; per claim
  ``claim_verdicts[C]`` = verdict, rule, summary, evidence, stability, source, preset,
  n_seeds). Keys are sorted, non-finite floats are written as ``null``, nothing depends on
  the clock: **the same config on the same machine and library versions gives the same
  bytes**.
* ``timings.json`` -- what is not reproducible: each experiment's wall time, its
  ``timings``, and the verdicts computed *from timings* (``Experiment.verdict_source ==
  "timings"``, E9): ``results.json`` records those as ``"n/a"`` with a pointer here, and the
  report and the claims table show them marked "timing-based".
* ``index.html`` -- the self-contained report (:mod:`deadrelu.lab.html`).
* ``figures/*.png`` -- written by the experiments.

An experiment that raises is recorded as a result with verdict ``"n/a"``, the error in its
numbers and caveats, and the run goes on; :func:`failed` lists such results.

Executors (:mod:`deadrelu.lab.executors`): the run is split into independent pieces
(:func:`split_pieces`: one per experiment, or one per arm of an experiment that declares
arms, :attr:`~deadrelu.lab.core.Experiment.arms`) that an executor runs -- ``"local"``
(this process, one after the other; the default) or ``"ray"`` (one Ray task per piece, on a
local Ray instance or a cluster; each experiment piece writes its figures into a private
directory and ships them back). An experiment's arms are assembled into its sweep, judged
and drawn in this process once they are all in (:func:`assemble_arms`), so a split
experiment gives exactly the unsplit one's result; its wall time in ``timings.json`` is the
sum of its arms' and that step's, with each arm's in ``timings["arms_s"]``. Results are
merged in run order, whatever order the pieces finish in, and the
executor is named only in ``timings.json`` and ``index.html``, so **``results.json`` is
byte-identical whichever executor ran it** (given the same ``--out``: ``config.out`` is the
one path it holds), and so are the figures, except those drawn from wall-clock timings
(E9's); ``timings.json`` and ``index.html`` differ (times, executor). A piece
whose remote task itself fails (a worker that died), or an arm that fails, is recorded as
its experiment's failure, with the (remote) traceback.

Determinism: each experiment runs with ``torch.use_deterministic_algorithms(True)``, the
global RNG seeded with 0 and, on the CPU, one intra-op thread (:data:`EXPERIMENT_THREADS`);
all restored afterwards. Experiments seed their own generators.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from deadrelu import __version__
from deadrelu.lab.claims import ClaimRow, claim_rows, markdown_table
from deadrelu.lab.core import (
    REGISTRY,
    Arm,
    ClaimVerdict,
    Experiment,
    ExperimentResult,
    Judgement,
    LabConfig,
    Sweep,
)
from deadrelu.lab.executors import Executor, LocalExecutor, make_executor, remote_cause
from deadrelu.lab.html import write_html
from deadrelu.lab.verdicts import bootstrap_indices, combine, stability

__all__ = [
    "BOOTSTRAP_SEED",
    "SCHEMA",
    "Piece",
    "PieceResult",
    "assemble_arms",
    "check_device",
    "claims_table",
    "failed",
    "known_ids",
    "load_run",
    "markdown_from_results",
    "resolve_only",
    "run_experiment",
    "run_lab",
    "run_piece",
    "run_piece_isolated",
    "split_pieces",
    "to_jsonable",
    "write_outputs",
]

SCHEMA = "deadrelu.lab/2"

#: Seed of the generator of the bootstrap resamples (NumPy PCG64): fixed, so the stability
#: written to results.json is the same on every run.
BOOTSTRAP_SEED = 20261129

log = logging.getLogger(__name__)

_ERROR_KEY = "error"

#: Intra-op threads while an experiment runs on the CPU. The lab's matmuls are small
#: (batches of 100 x 100 weights): on a 2-core machine one thread was 4x to 30x faster
#: than two (more so when the cores are shared), and a fixed count keeps float results
#: identical on machines with different core counts.
EXPERIMENT_THREADS = 1


# --------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------


def to_jsonable(x: Any) -> Any:
    """``x`` with tensors, tuples, paths and numpy values made JSON-able; NaN/inf -> None."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, torch.Tensor):
        return to_jsonable(x.detach().cpu().tolist())
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, Path):
        return x.as_posix()
    tolist = getattr(x, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return to_jsonable(tolist())
    return str(x)


def _dump(obj: Any, path: Path) -> None:
    text = json.dumps(to_jsonable(obj), sort_keys=True, indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------


def _load_experiments() -> None:
    import deadrelu.lab.experiments  # noqa: F401  (registers the experiments)


def known_ids() -> list[str]:
    """Every runnable id of :data:`REGISTRY`, in run order: live checks, then experiments."""
    _load_experiments()
    return list(REGISTRY)


def resolve_only(only: str | Iterable[str] | None) -> list[str]:
    """Ids to run, in run order: all for None, else the given ones.

    Accepts ``"E1,E7"``, ``["e1", "L1"]``. An unknown id raises ``ValueError`` listing the
    known ones.
    """
    known = known_ids()
    if only is None:
        return known
    raw = only.split(",") if isinstance(only, str) else list(only)
    wanted = [w.strip().upper() for w in raw if w.strip()]
    if not wanted:
        raise ValueError(f"--only is empty; give experiment ids such as E1,E7 (known: {known})")
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ValueError(
            f"unknown experiment id(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return [k for k in known if k in wanted]


def check_device(device: str) -> None:
    """Raise ``ValueError`` unless ``device`` is ``"cpu"`` or an available CUDA device."""
    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {device} was asked for but this torch build sees no CUDA device "
                f"(torch {torch.__version__}); use --device cpu"
            )
        return
    raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'")


# --------------------------------------------------------------------------------------
# Running one experiment
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _deterministic(cfg: LabConfig) -> Iterator[None]:
    """Global RNG seeded with 0, deterministic algorithms, one CPU thread; all restored."""
    was_det = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if cfg.device == "cpu":
            torch.set_num_threads(EXPERIMENT_THREADS)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_det)
            torch.set_num_threads(threads)


class _Keep(dict[str, Any]):
    """``format_map`` helper: a missing key stays as written, ``{key}``."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _format_method(method: str, numbers: Mapping[str, Any]) -> str:
    try:
        return method.format_map(_Keep(numbers))
    except (ValueError, IndexError, AttributeError, KeyError):
        return method


def _claim_record(
    cv: ClaimVerdict, exp: Experiment, cfg: LabConfig, sweep: Sweep, stab: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "verdict": cv.verdict,
        "rule": cv.rule,
        "summary": cv.summary,
        "evidence": to_jsonable(cv.evidence),
        "stability": stab,
        "source": exp.verdict_source,
        "preset": cfg.preset,
        "n_seeds": sweep.n_seeds,
        "axis": sweep.axis,
    }


def _stabilities(
    exp: Experiment, sweep: Sweep, judgement: Judgement
) -> dict[str, dict[str, Any] | None]:
    """Per claim: the stability of its verdict over bootstrap resamples of the seeds."""
    if sweep.n_seeds < 2 or exp.resamples < 1:
        return dict.fromkeys(judgement.claims)
    seen: dict[str, list[str]] = {c: [] for c in judgement.claims}
    for idx in bootstrap_indices(sweep.n_seeds, exp.resamples, BOOTSTRAP_SEED):
        try:
            claims = exp.judge(sweep, idx).claims
        except Exception:  # a resample the judge cannot handle counts as a different verdict
            claims = {}
        for c in seen:
            cv = claims.get(c)
            seen[c].append(cv.verdict if cv is not None else "error")
    return {c: stability(judgement.claims[c].verdict, seen[c]).to_dict() for c in judgement.claims}


def _result_from(
    exp: Experiment,
    cfg: LabConfig,
    sweep: Sweep,
    judgement: Judgement,
    stab: Mapping[str, dict[str, Any] | None],
    figures: list[str],
    caveats: list[str],
) -> ExperimentResult:
    records: dict[str, dict[str, Any]] = {}
    for c in exp.claims:
        cv = judgement.claims.get(c)
        if cv is None:
            cv = ClaimVerdict("n/a", "the judge gave no verdict for this claim", "no verdict")
        records[c] = _claim_record(cv, exp, cfg, sweep, stab.get(c))
    verdicts = [r["verdict"] for r in records.values()]

    def joined(key: str, sep: str) -> str:
        if len(records) == 1:
            return str(next(iter(records.values()))[key])
        return sep.join(f"{c}: {r[key]}" for c, r in records.items())

    return ExperimentResult(
        id=exp.id,
        claims=tuple(exp.claims),
        title=exp.title,
        question=exp.question,
        method=_format_method(exp.method, sweep.numbers),
        numbers=to_jsonable(sweep.numbers),
        verdict=combine(verdicts),
        verdict_rule=joined("rule", " | "),
        summary=joined("summary", "; "),
        figures=figures,
        caveats=caveats,
        timings=to_jsonable(sweep.timings),
        claim_verdicts=records,
        derived=to_jsonable(judgement.derived),
        preset=cfg.preset,
        n_seeds=sweep.n_seeds,
        style="v2",
    )


def _check_judgement(exp: Experiment, judgement: Judgement) -> None:
    extra = set(judgement.claims) - set(exp.claims)
    if extra:
        raise ValueError(
            f"{exp.id}.judge returned verdicts for {sorted(extra)}, which {exp.id} does not "
            f"declare (claims={list(exp.claims)}); add them to Experiment.claims"
        )


def run_experiment(
    exp: Experiment, cfg: LabConfig, arm_values: list[Any] | None = None
) -> ExperimentResult:
    """Sweep, judge, bootstrap the verdicts' stability and draw the figures of ``exp``.

    Runs inside the lab's deterministic context. ``arm_values``: the values of the arms of
    an experiment declared in arms (:attr:`Experiment.arms`), run elsewhere; the sweep is
    then ``exp.assemble(cfg, arm_values)`` instead of ``exp.sweep(cfg)``. A failing
    ``figure`` step leaves the verdicts standing and adds a caveat; a failing ``sweep``,
    ``assemble`` or ``judge`` raises.
    """
    with _deterministic(cfg):
        if arm_values is None:
            sweep = exp.sweep(cfg)
        else:
            if exp.assemble is None:
                raise ValueError(f"{exp.id} declares no arms; run it without arm_values")
            sweep = exp.assemble(cfg, arm_values)
        t0 = time.perf_counter()
        judgement = exp.judge(sweep, None)
        _check_judgement(exp, judgement)
        stab = _stabilities(exp, sweep, judgement)
        judge_s = time.perf_counter() - t0
        caveats = list(exp.caveats)
        figures: list[str] = []
        if exp.figure is not None:
            try:
                figures = list(exp.figure(cfg, sweep, judgement))
            except Exception as exc:  # the verdicts stand without their figure
                log.exception("figure of %s failed", exp.id)
                caveats.append(f"the figure could not be drawn: {type(exc).__name__}: {exc}")
    sweep.timings.setdefault("judge_and_bootstrap_s", judge_s)
    return _result_from(exp, cfg, sweep, judgement, stab, figures, caveats)


def _failed_result(
    exp: Experiment, exc: BaseException, cfg: LabConfig, *, tb: str | None = None, where: str = ""
) -> ExperimentResult:
    """The result of an experiment that raised: no verdict, the error on every claim.

    ``tb``: the traceback text (default: the one being handled); ``where``: a prefix saying
    where it failed outside the experiment (``"the Ray task failed: "``).
    """
    msg = f"{where}{type(exc).__name__}: {exc}"
    record: dict[str, Any] = {
        "verdict": "n/a",
        "rule": "the experiment failed; no verdict",
        "summary": f"FAILED: {msg}"[:200],
        "evidence": {},
        "stability": None,
        "source": "numbers",
        "preset": cfg.preset,
        "n_seeds": cfg.n_seeds,
    }
    return ExperimentResult(
        id=exp.id,
        claims=tuple(exp.claims),
        title=exp.title,
        question="",
        method="",
        numbers={_ERROR_KEY: msg},
        verdict="n/a",
        verdict_rule="the experiment failed; no verdict",
        summary=f"FAILED: {msg}"[:200],
        caveats=[tb if tb is not None else traceback.format_exc(limit=6)],
        claim_verdicts={c: dict(record) for c in exp.claims},
    )


def failed(results: Sequence[ExperimentResult]) -> list[ExperimentResult]:
    """The results of experiments that raised."""
    return [r for r in results if _ERROR_KEY in r.numbers and r.verdict == "n/a"]


def _run_one(
    exp: Experiment, cfg: LabConfig, arm_values: list[Any] | None = None
) -> tuple[ExperimentResult, float]:
    t0 = time.perf_counter()
    try:
        result = run_experiment(exp, cfg, arm_values)
    except Exception as exc:  # recorded, the run goes on
        log.exception("experiment %s failed", exp.id)
        result = _failed_result(exp, exc, cfg)
    return result, time.perf_counter() - t0


# --------------------------------------------------------------------------------------
# Pieces: what an executor runs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """One independent piece of a lab run under ``cfg``: a whole experiment (its sweep,
    with the batched trainer, its judge, bootstrap and figures), or, when ``arm`` is given,
    one arm of an experiment declared in arms (:attr:`Experiment.arms`; the sweep's
    training only). Picklable: a remote executor ships it to a worker, which imports the
    experiment's module by name."""

    exp: Experiment
    cfg: LabConfig
    arm: Arm | None = None

    @property
    def label(self) -> str:
        """``"E4 Remedies ..."``, or ``"E4 · high lr: relu"`` for an arm."""
        if self.arm is None:
            return f"{self.exp.id} {self.exp.title}"
        return f"{self.exp.id} · {self.arm.name}"


@dataclass
class PieceResult:
    """What a piece gave: its wall time on the worker; for an experiment its result and the
    files it wrote (relative path -> bytes; empty when it wrote straight into
    ``cfg.out``); for an arm its ``value``, and ``result`` None (or the experiment's failed
    result when the arm failed)."""

    result: ExperimentResult | None
    seconds: float
    files: dict[str, bytes] = field(default_factory=dict)
    value: Any = None


def split_pieces(ids: Sequence[str], cfg: LabConfig) -> list[Piece]:
    """The pieces of a run of ``ids``, in run order: one per experiment, or one per arm of
    an experiment that declares arms (:attr:`Experiment.arms`; its arms in their order).

    A piece never spans two experiments; only an experiment's own arms split it (each arm
    a few batched-trainer calls), and its judge, bootstrap and figures run once all its
    arms are in (:func:`assemble_arms`). An experiment whose ``arms(cfg)`` raises or gives
    none is one piece (its ``sweep`` then fails or runs as it would unsplit); arm names
    repeated within an experiment raise ``ValueError``.
    """
    pieces: list[Piece] = []
    for i in ids:
        exp = REGISTRY[i]
        try:
            arms = list(exp.arms(cfg)) if exp.arms is not None else []
        except Exception:  # recorded when its sweep runs
            log.exception("%s.arms failed; %s runs as one piece", i, i)
            arms = []
        names = [a.name for a in arms]
        if len(set(names)) < len(names):
            raise ValueError(f"{i}.arms gave repeated arm names {names}; name each arm once")
        pieces.extend([Piece(exp, cfg, arm) for arm in arms] or [Piece(exp, cfg)])
    return pieces


def _run_arm(piece: Piece, arm: Arm) -> PieceResult:
    """Run one arm here; an arm that raises gives its experiment's failed result."""
    t0 = time.perf_counter()
    try:
        with _deterministic(piece.cfg):
            value = arm.run()
    except Exception as exc:  # the experiment fails; the run goes on
        log.exception("arm %r of %s failed", arm.name, piece.exp.id)
        where = f"arm {arm.name!r} failed: "
        failure = _failed_result(piece.exp, exc, piece.cfg, where=where)
        return PieceResult(failure, time.perf_counter() - t0)
    return PieceResult(None, time.perf_counter() - t0, value=value)


def assemble_arms(pieces: Sequence[Piece], done: Sequence[PieceResult]) -> PieceResult:
    """The result of an experiment from its arm pieces (in the arms' order) and what they
    gave: its first failed arm's failure, else ``assemble``, judge, bootstrap and figures
    here (figures into ``cfg.out``). Its seconds are the arms' plus this step's; its
    ``timings["arms_s"]`` gives each arm's seconds."""
    exp, cfg = pieces[0].exp, pieces[0].cfg
    arm_s = sum(d.seconds for d in done)
    for d in done:
        if d.result is not None:
            return PieceResult(d.result, arm_s)
    result, seconds = _run_one(exp, cfg, [d.value for d in done])
    if not failed([result]):
        names = [p.arm.name if p.arm is not None else "" for p in pieces]
        result.timings["arms_s"] = dict(zip(names, (d.seconds for d in done), strict=True))
    return PieceResult(result, arm_s + seconds)


def run_piece(piece: Piece) -> PieceResult:
    """Run ``piece`` here; its figures go straight into ``piece.cfg.out``."""
    if piece.arm is not None:
        return _run_arm(piece, piece.arm)
    result, seconds = _run_one(piece.exp, piece.cfg)
    return PieceResult(result, seconds)


def run_piece_isolated(piece: Piece) -> PieceResult:
    """Run ``piece`` with a private temporary output directory (the worker may be another
    machine) and return the files it wrote, to be written into ``cfg.out`` by the caller.
    Nothing of the temporary path reaches the result: figures are relative paths. (An arm
    writes no files: it runs as in :func:`run_piece`.)"""
    if piece.arm is not None:
        return _run_arm(piece, piece.arm)
    with tempfile.TemporaryDirectory(prefix="deadrelu-lab-") as tmp:
        root = Path(tmp)
        result, seconds = _run_one(piece.exp, replace(piece.cfg, out=root))
        files = {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }
    return PieceResult(result, seconds, files)


def _task_failed(piece: Piece, exc: BaseException, tb: str) -> PieceResult:
    """A piece whose task failed outside the experiment (a worker or node that died, a
    piece that could not be unpickled): a failed result with the remote traceback."""
    system = "Ray" if type(exc).__module__.startswith("ray") else "remote"
    what = piece.exp.id if piece.arm is None else f"{piece.exp.id} (arm {piece.arm.name!r})"
    where = f"the {system} task running {what} failed: "
    return PieceResult(
        _failed_result(piece.exp, remote_cause(exc), piece.cfg, tb=tb, where=where), 0.0
    )


def _write_files(out: Path, files: Mapping[str, bytes]) -> None:
    for rel, data in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import numpy

    return {
        "deadrelu": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _config_dict(cfg: LabConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["out"] = Path(cfg.out).as_posix()
    d["n_seeds"] = cfg.n_seeds
    return d


_TIMING_NOTE = "timing-based: measured from wall-clock timings, see timings.json"


def _timing_claims(r: ExperimentResult) -> list[str]:
    return [c for c, rec in r.claim_verdicts.items() if rec.get("source") == "timings"]


def _reproducible_dict(r: ExperimentResult) -> dict[str, Any]:
    """``r`` without timings, and with its timing-based verdicts replaced by a pointer."""
    d = r.to_dict(include_timings=False)
    timing = _timing_claims(r)
    if not timing:
        return d
    records = dict(d["claim_verdicts"])
    for c in timing:
        records[c] = {
            **records[c],
            "verdict": "n/a",
            "summary": _TIMING_NOTE,
            "rule": "computed from timings (not reproducible): see timings.json",
            "evidence": {},
            "stability": None,
        }
    d["claim_verdicts"] = records
    if len(timing) == len(records):
        d["verdict"] = "n/a"
        d["summary"] = _TIMING_NOTE
        d["verdict_rule"] = "computed from timings (not reproducible): see timings.json"
        d["derived"] = {}  # computed from the timings too: in timings.json
    return d


def write_outputs(
    results: Sequence[ExperimentResult],
    cfg: LabConfig,
    *,
    wall: Mapping[str, float] | None = None,
    executor: str = "local (this process)",
) -> dict[str, Path]:
    """Write ``results.json``, ``timings.json`` and ``index.html`` into ``cfg.out``.

    ``executor`` (which executor ran the pieces, in words) goes into ``timings.json`` and
    the HTML report, never into ``results.json``: that file is the same bytes whichever
    executor ran the run.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config = _config_dict(cfg)
    versions = _versions()
    doc = {
        "schema": SCHEMA,
        "config": config,
        "versions": versions,
        "bootstrap_seed": BOOTSTRAP_SEED,
        "experiments": {r.id: _reproducible_dict(r) for r in results},
        "order": [r.id for r in results],
    }
    _dump(doc, out / "results.json")
    timing_doc: dict[str, Any] = {
        "schema": SCHEMA + "/timings",
        "executor": executor,
        "experiments": {},
    }
    for r in results:
        entry: dict[str, Any] = {"wall_s": (wall or {}).get(r.id), "timings": r.timings}
        timing = _timing_claims(r)
        if timing:
            entry["claim_verdicts"] = {c: r.claim_verdicts[c] for c in timing}
            if len(timing) == len(r.claim_verdicts):
                entry["derived"] = to_jsonable(r.derived)
        timing_doc["experiments"][r.id] = entry
    _dump(timing_doc, out / "timings.json")
    meta = {"schema": SCHEMA, **{f"config.{k}": v for k, v in config.items()}}
    meta.update({f"version.{k}": v for k, v in versions.items()})
    meta["executor"] = executor
    page = write_html([to_jsonable(r.to_dict()) for r in results], out, meta=meta)
    return {"results": out / "results.json", "timings": out / "timings.json", "html": page}


def _line(r: ExperimentResult, seconds: float) -> str:
    bits = []
    for c, rec in r.claim_verdicts.items():
        stab = rec.get("stability") or {}
        share = stab.get("share")
        tag = f", stability {share:.0%}" if share is not None and stab.get("resamples") else ""
        if stab.get("fragile"):
            tag += " [yellow]fragile[/yellow]"
        if rec.get("source") == "timings":
            tag += ", timing-based"
        bits.append(f"{c} {rec.get('verdict')}{tag}")
    return f"  {r.id}: {'; '.join(bits)}  [dim]({r.preset}, {seconds:.1f} s)[/dim]"


def run_lab(
    cfg: LabConfig,
    only: str | Iterable[str] | None = None,
    progress: bool = True,
    executor: str | Executor[Piece, PieceResult] = "local",
) -> list[ExperimentResult]:
    """Run the experiments and live checks (all, or ``only``), write the outputs, return
    the results in run order.

    Args:
        cfg: the configuration (preset, seeds, device, output directory, dataset).
        only: ids (``"E1,E7"`` or a list); None runs them all.
        progress: show a rich progress bar and one line per finished experiment (on
            stderr).
        executor: where the pieces (:func:`split_pieces`: experiments, or their arms) run:
            ``"local"`` (this process, one after the other), ``"ray"`` (a local Ray
            instance), or an :class:`~deadrelu.lab.executors.Executor` (e.g.
            ``RayExecutor(address=...)``), entered and left here. The results are merged
            in run order, so ``results.json`` is the same bytes for every executor; the
            executor is named in ``timings.json`` and the HTML report.

    Raises:
        ValueError: unknown experiment id, or a CUDA device that is not available.
        deadrelu.lab.executors.ExecutorError: the executor could not start (Ray not
            installed, a cluster that cannot be reached).
    """
    ids = resolve_only(only)
    check_device(cfg.device)
    pieces = split_pieces(ids, cfg)
    ex: Executor[Piece, PieceResult] = (
        make_executor(executor) if isinstance(executor, str) else executor
    )
    with ex:
        return _run_pieces(ex, pieces, cfg, progress)


def _run_pieces(
    ex: Executor[Piece, PieceResult], pieces: Sequence[Piece], cfg: LabConfig, progress: bool
) -> list[ExperimentResult]:
    work = run_piece if ex.shares_filesystem else run_piece_isolated
    where = ex.describe()
    sequential = isinstance(ex, LocalExecutor)  # else the pieces run at once, elsewhere
    remote = not sequential
    # the pieces of each experiment (one, or its arms), in run order
    groups: dict[str, list[int]] = {}
    for i, piece in enumerate(pieces):
        groups.setdefault(piece.exp.id, []).append(i)
    arms_done: dict[str, dict[int, PieceResult]] = {exp_id: {} for exp_id in groups}
    finished: dict[str, PieceResult] = {}

    def finish(i: int, piece_result: PieceResult) -> PieceResult | None:
        """Per finished piece, in completion order: the experiment's result once all its
        pieces are in (its arms assembled, its files written, its failure logged)."""
        exp_id = pieces[i].exp.id
        arms_done[exp_id][i] = piece_result
        if len(arms_done[exp_id]) < len(groups[exp_id]):
            return None
        whole = piece_result
        if pieces[i].arm is not None:
            idx = groups[exp_id]
            whole = assemble_arms([pieces[j] for j in idx], [arms_done[exp_id][j] for j in idx])
        _write_files(Path(cfg.out), whole.files)
        r = whole.result
        assert r is not None  # an experiment's piece, or assembled arms, has its result
        if remote and failed([r]):
            log.error("experiment %s failed on %s:\n%s", r.id, where, "".join(r.caveats[:1]))
        finished[exp_id] = whole
        return whole

    def run_all(report: Callable[[int, PieceResult | None, bool], None]) -> list[PieceResult]:
        def done(i: int, piece_result: PieceResult) -> None:
            report(i, finish(i, piece_result), True)
            if sequential and i + 1 < len(pieces):
                report(i + 1, None, False)  # one at a time: the next one starts now

        if pieces and sequential:
            report(0, None, False)
        ex.run(work, pieces, on_done=done, on_error=_task_failed, gpu=cfg.device.startswith("cuda"))
        return [finished[exp_id] for exp_id in groups]

    def outputs(done: Sequence[PieceResult]) -> list[ExperimentResult]:
        results = [d.result for d in done if d.result is not None]
        wall = {r.id: d.seconds for r, d in zip(results, done, strict=True)}
        write_outputs(results, cfg, wall=wall, executor=where)
        return results

    if not progress:
        return outputs(run_all(lambda *_: None))

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        if remote:
            bar.console.print(
                f"[dim]{len(pieces)} pieces of {len(groups)} experiments on {where}[/dim]"
            )
        task = bar.add_task("lab" if not remote else f"lab on {where}", total=len(pieces) + 1)

        def report(i: int, whole: PieceResult | None, ended: bool) -> None:
            """Piece ``i`` starts (not ``ended``) or ended; ``whole``: its experiment's
            result, when this piece was the experiment's last."""
            if not ended:
                bar.update(task, description=pieces[i].label)
                return
            if whole is not None and whole.result is not None:
                bar.console.print(_line(whole.result, whole.seconds))
            bar.advance(task)

        done = run_all(report)
        bar.update(task, description="report")
        results = outputs(done)
        bar.advance(task)
    return results


# --------------------------------------------------------------------------------------
# Tables: terminal and Markdown
# --------------------------------------------------------------------------------------

_STYLE = {"supported": "green", "not supported": "red", "mixed": "yellow", "n/a": "dim"}


def _rows_of(results: Sequence[ExperimentResult] | Sequence[ClaimRow]) -> list[ClaimRow]:
    if results and isinstance(results[0], ClaimRow):
        return [r for r in results if isinstance(r, ClaimRow)]
    return claim_rows([r.to_dict() for r in results if isinstance(r, ExperimentResult)])


def claims_table(
    results: Sequence[ExperimentResult] | Sequence[ClaimRow], *, show_text: bool = True
) -> Any:
    """A ``rich.table.Table``: one row per claim (several experiments of one claim
    combined), with the verdict (fragile ones marked), key number(s) and where they came
    from (experiment, preset, seeds, timing-based). ``show_text=False`` leaves out the
    column with the claim's text (for narrow terminals)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="deadrelu lab: claims")
    table.add_column("claim", no_wrap=True)
    if show_text:
        table.add_column("the notes say")
    table.add_column("verdict")
    table.add_column("key number")
    table.add_column("from")
    for row in _rows_of(results):
        style = _STYLE.get(row.verdict, "")
        badge = f"[{style}]{escape(row.verdict)}[/{style}]" if style else escape(row.verdict)
        if row.fragile and row.stability is not None:
            badge += f"\n[yellow]fragile ({row.stability:.0%})[/yellow]"
        cells = [row.claim, escape(row.text)] if show_text else [row.claim]
        table.add_row(*cells, badge, escape(row.summary), escape(row.provenance))
    return table


def load_run(results_json: Path | str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The experiment entries of a ``results.json`` (in run order) and, when a
    ``timings.json`` lies beside it, that file's ``experiments`` mapping (else None).

    Raises ``ValueError`` when the file is not a lab results file of a known schema.
    """
    path = Path(results_json)
    doc = json.loads(path.read_text(encoding="utf-8"))
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema not in (SCHEMA, "deadrelu.lab/1"):
        raise ValueError(
            f"{path} is not a deadrelu lab results file (schema {schema!r}, expected "
            f"{SCHEMA!r}); pass the results.json that `deadrelu lab` wrote"
        )
    exps = [doc["experiments"][i] for i in doc.get("order", doc["experiments"])]
    if schema == "deadrelu.lab/1":  # live panels lived apart
        exps = list(doc.get("live_checks", {}).values()) + exps
    timings_path = path.with_name("timings.json")
    timings = None
    if timings_path.is_file():
        timings = json.loads(timings_path.read_text(encoding="utf-8")).get("experiments")
    return exps, timings


def markdown_from_results(results_json: Path | str) -> str:
    """The claims table, as Markdown, of the run whose ``results.json`` is given (timing-
    based verdicts from the ``timings.json`` beside it, when present)."""
    exps, timings = load_run(results_json)
    return markdown_table(claim_rows(exps, timings))
