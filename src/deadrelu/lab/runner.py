"""Run the lab: every experiment, the live checks, ``results.json``, ``index.html``.

:func:`run_lab` runs the registered experiments (:data:`deadrelu.lab.core.EXPERIMENTS`) in
order, with a rich progress bar, and writes into ``cfg.out``:

* ``results.json`` -- schema ``"deadrelu.lab/1"``: the configuration, library versions, the
  live checks (C1, C2, C14) and one entry per experiment (``ExperimentResult.to_dict``
  without ``timings``). Keys are sorted, non-finite floats are written as ``null``, and
  nothing in it depends on the clock: **the same config on the same machine and library
  versions gives the same bytes**.
* ``timings.json`` -- what is not reproducible: each experiment's wall time and its
  ``timings`` dict. An experiment whose verdict is computed *from timings* (E9, the cost of
  an activation; it sets ``numbers["verdict_source"] = "timings"``) has its verdict,
  summary and rule written here, and ``results.json`` records ``"verdict": "n/a"`` with a
  summary pointing to ``timings.json``. The decision keeps ``results.json`` exactly
  reproducible while the report still shows the measured verdict.
* ``index.html`` -- the self-contained report (:mod:`deadrelu.lab.html`); it shows timings,
  so it is not byte-reproducible when E9 runs.
* ``figures/*.png`` -- written by the experiments.

An experiment that raises is recorded as a result with verdict ``"n/a"``, the error in its
numbers and caveats, and the run goes on; :func:`failed` lists such results.

Determinism: each experiment runs with ``torch.use_deterministic_algorithms(True)``, the
global RNG seeded with 0 and, on the CPU, one intra-op thread (:data:`EXPERIMENT_THREADS`);
all restored afterwards. Experiments seed their own generators.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deadrelu.lab.core import EXPERIMENTS, ExperimentResult, LabConfig

__all__ = [
    "SCHEMA",
    "claims_table",
    "failed",
    "live_checks",
    "resolve_only",
    "run_lab",
    "to_jsonable",
]

SCHEMA = "deadrelu.lab/1"

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


def resolve_only(only: str | Iterable[str] | None) -> list[str]:
    """Experiment ids to run, in registry order: all for None, else the given ones.

    Accepts ``"E1,E7"``, ``["e1", "E7"]``. An unknown id raises ``ValueError`` listing the
    known ones.
    """
    _load_experiments()
    known = list(EXPERIMENTS)
    if only is None:
        return known
    raw = only.split(",") if isinstance(only, str) else list(only)
    wanted = [w.strip().upper() for w in raw if w.strip()]
    if not wanted:
        raise ValueError(f"--only is empty; give experiment ids such as E1,E7 (known: {known})")
    unknown = [w for w in wanted if w not in EXPERIMENTS]
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
# Live checks: C1, C2, C14
# --------------------------------------------------------------------------------------


def _derivative_check() -> dict[str, Any]:
    """C14: each registered activation's formula f'(z) against autograd, float64."""
    from deadrelu.activations import get, names

    z = torch.cat(
        [
            torch.linspace(-8.0, 8.0, 1601, dtype=torch.float64),
            torch.tensor([0.0, 6.0, -1e-9, 1e-9, -30.0, 30.0], dtype=torch.float64),
        ]
    )
    rows: list[list[Any]] = []
    worst = 0.0
    zero_match = True
    for name in names():
        act = get(name)
        assert act is not None
        zz = z.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(act(zz).sum(), zz)
        formula = act.derivative(z)
        err = float((formula - auto).abs().max())
        z0 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        (auto0,) = torch.autograd.grad(act(z0).sum(), z0)
        f0 = float(act.derivative(torch.zeros(1, dtype=torch.float64))[0])
        zero_match = zero_match and f0 == float(auto0[0])
        worst = max(worst, err)
        rows.append([str(act), act.spec.derivative_formula, f0, float(auto0[0]), err])
    ok = worst <= 1e-12 and zero_match
    return {
        "id": "L14",
        "claims": ["C14"],
        "title": "derivative formulas vs autograd",
        "text": (
            "Each activation of deadrelu.activations at its default parameters: the closed-form "
            "f'(z) against torch.autograd on 1607 points in [-30, 30] (float64), including "
            "z = 0 and the kinks. f'(0) is the convention torch's backward uses."
        ),
        "columns": ["activation", "f'(z) formula", "f'(0) formula", "f'(0) autograd", "max |diff|"],
        "rows": rows,
        "verdict": "supported" if ok else "not supported",
        "rule": (
            f"supported if max |formula - autograd| <= 1e-12 for every activation and f'(0) "
            f"matches exactly; measured max {worst:.3g}, f'(0) all equal: {zero_match}"
        ),
        "summary": f"{len(rows)} activations, max |formula - autograd| = {worst:.2g}",
        "numbers": {"max_abs_diff": worst, "f0_all_equal": zero_match, "n": len(rows)},
    }


def _dead_unit_check() -> dict[str, Any]:
    """C1 + C2: a tiny model with two units given bias -1000: found dead, zero gradient."""
    from deadrelu.classify import dead_mask
    from deadrelu.scan import scan

    g = torch.Generator().manual_seed(0)
    lin1, lin2 = nn.Linear(4, 6), nn.Linear(6, 3)
    model = nn.Sequential(lin1, nn.ReLU(), lin2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        lin1.bias[2] = -1000.0
        lin1.bias[4] = -1000.0
    x = torch.randn(512, 4, generator=g)
    y = torch.randint(0, 3, (512,), generator=g)
    report = scan(model, x)  # the library's own pass: site "1" is the ReLU
    found_scan = report.dead_units("1")
    z = lin1(x)  # (N, 6)
    h = torch.relu(z)
    loss = nn.functional.cross_entropy(lin2(h), y)
    loss.backward()
    assert lin1.weight.grad is not None and lin1.bias.grad is not None
    z, h = z.detach(), h.detach()
    dead = dead_mask((z > 0).sum(dim=0))
    found = [int(i) for i in torch.nonzero(dead).flatten()]
    bound = 10.0  # certificate domain: every input in the box [-10, 10]^4
    zmax_box = (lin1.bias + bound * lin1.weight.abs().sum(dim=1)).detach()
    rows = []
    grads_ok = True
    for u in range(6):
        gw = float(lin1.weight.grad[u].abs().max())
        gb = float(lin1.bias.grad[u].abs())
        out_max = float(h[:, u].abs().max())
        if bool(dead[u]):
            grads_ok = grads_ok and gw == 0.0 and gb == 0.0 and out_max == 0.0
        else:
            grads_ok = grads_ok and (gw > 0.0 or gb > 0.0)
        rows.append(
            [
                u,
                float(lin1.bias[u].detach()),
                u in found_scan,
                bool(dead[u]),
                out_max,
                gw,
                gb,
                float(zmax_box[u]) < 0,
            ]
        )
    ok = found == [2, 4] and found_scan == [2, 4] and grads_ok
    return {
        "id": "L1",
        "claims": ["C1", "C2"],
        "title": "a unit with bias -1000: dead, and its gradient is exactly 0",
        "text": (
            "Linear(4, 6) -> ReLU -> Linear(6, 3), weights N(0, 0.25) from seed 0, biases of "
            "units 2 and 4 set to -1000; 512 Gaussian inputs. Dead units found by "
            "deadrelu.scan and, directly, by deadrelu.classify.dead_mask (never z > 0 on any "
            "input); then one cross-entropy backward. The last column is the data-free "
            "certificate over the box [-10, 10]^4: max of w.x + b over the box, "
            "b + 10 * sum|w|, is below 0 (C1's 'for any input value')."
        ),
        "columns": [
            "unit",
            "bias",
            "dead (scan)",
            "dead (classify)",
            "max |output|",
            "max |dL/dw|",
            "|dL/db|",
            "certified dead on box",
        ],
        "rows": rows,
        "verdict": "supported" if ok else "not supported",
        "rule": (
            "supported if exactly units [2, 4] are found dead (by scan and by classify), their "
            "outputs and the gradients of their weights and bias are exactly 0, and every live "
            f"unit gets a non-zero gradient; found dead {found_scan} (scan), {found} "
            f"(classify), gradients as claimed: {grads_ok}"
        ),
        "summary": f"dead units found {found_scan}; their dL/dw and dL/db are exactly 0",
        "numbers": {
            "dead_found": found,
            "dead_found_scan": found_scan,
            "gradients_as_claimed": grads_ok,
        },
    }


def _selu_notes() -> dict[str, Any]:
    """C13: not an experiment; what is known of SELU's limits, as a panel."""
    known = [
        [
            "init",
            "the (0, 1) fixed point needs LeCun normal weights, N(0, 1/fan_in) "
            "(Klambauer et al. 2017, Sec. 3); E8 shows it holds there",
        ],
        [
            "dropout",
            "standard dropout breaks the fixed point; the paper introduces alpha-dropout",
        ],
        [
            "architecture",
            "the proof covers fully connected layers with normalised inputs; with convolutions, "
            "residual connections or BatchNorm the guarantee does not carry over",
        ],
        [
            "adoption",
            "far less used than ReLU/GELU in published architectures, so fewer tested recipes "
            "(the notes' 'new, less studied')",
        ],
    ]
    return {
        "id": "L13",
        "claims": ["C13"],
        "title": "SELU's drawbacks (not an experiment)",
        "text": (
            "C13 is not tested: the notes call SELU new and less studied. Known limits of its "
            "self-normalisation, from the paper itself; E8 tests it inside those limits."
        ),
        "columns": ["topic", "what is known"],
        "rows": known,
        "verdict": "n/a",
        "rule": "no experiment: a statement about the literature, reported, not measured",
        "summary": "not an experiment: init, alpha-dropout and architecture limits (see E8)",
        "numbers": {},
    }


def live_checks() -> list[dict[str, Any]]:
    """The report's live panels: C1 + C2 (a -1000-bias unit), C14 (derivatives), and C13
    (SELU's known limits, not an experiment).

    Each panel is a dict with ``id``, ``claims``, ``title``, ``text``, ``columns``,
    ``rows``, ``verdict``, ``rule``, ``summary`` and ``numbers``; deterministic.
    """
    return [_dead_unit_check(), _derivative_check(), _selu_notes()]


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


def _failed_result(exp_id: str, exc: BaseException) -> ExperimentResult:
    spec = EXPERIMENTS[exp_id]
    msg = f"{type(exc).__name__}: {exc}"
    return ExperimentResult(
        id=exp_id,
        claims=spec.claims,
        title=spec.title,
        question="",
        method="",
        numbers={_ERROR_KEY: msg},
        verdict="n/a",
        verdict_rule="the experiment failed; no verdict",
        summary=f"FAILED: {msg}"[:200],
        caveats=[traceback.format_exc(limit=6)],
    )


def failed(results: Sequence[ExperimentResult]) -> list[ExperimentResult]:
    """The results of experiments that raised."""
    return [r for r in results if _ERROR_KEY in r.numbers and r.verdict == "n/a"]


def _run_one(exp_id: str, cfg: LabConfig) -> tuple[ExperimentResult, float]:
    spec = EXPERIMENTS[exp_id]
    was_det = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if cfg.device == "cpu":
            torch.set_num_threads(EXPERIMENT_THREADS)
        try:
            result = spec.run(cfg)
        except Exception as exc:  # recorded, the run goes on
            log.exception("experiment %s failed", exp_id)
            result = _failed_result(exp_id, exc)
        finally:
            torch.use_deterministic_algorithms(was_det)
            torch.set_num_threads(threads)
    return result, time.perf_counter() - t0


def _versions() -> dict[str, str]:
    import numpy

    from deadrelu import __version__

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


def _reproducible_dict(r: ExperimentResult) -> dict[str, Any]:
    d = r.to_dict(include_timings=False)
    if r.numbers.get("verdict_source") == "timings":
        d["verdict"] = "n/a"
        d["summary"] = "verdict measured from wall-clock timings: see timings.json"
        d["verdict_rule"] = "computed from timings (not reproducible): see timings.json"
    return d


def write_outputs(
    results: Sequence[ExperimentResult],
    cfg: LabConfig,
    *,
    live: Sequence[Mapping[str, Any]] | None = None,
    wall: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``timings.json`` and ``index.html`` into ``cfg.out``."""
    from deadrelu.lab.html import write_html

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    live = list(live) if live is not None else live_checks()
    config = _config_dict(cfg)
    versions = _versions()
    doc = {
        "schema": SCHEMA,
        "config": config,
        "versions": versions,
        "live_checks": {p["id"]: p for p in live},
        "experiments": {r.id: _reproducible_dict(r) for r in results},
        "order": [r.id for r in results],
    }
    _dump(doc, out / "results.json")
    timing_doc: dict[str, Any] = {"schema": SCHEMA + "/timings", "experiments": {}}
    for r in results:
        entry: dict[str, Any] = {"wall_s": (wall or {}).get(r.id), "timings": r.timings}
        if r.numbers.get("verdict_source") == "timings":
            entry.update(verdict=r.verdict, summary=r.summary, verdict_rule=r.verdict_rule)
        timing_doc["experiments"][r.id] = entry
    _dump(timing_doc, out / "timings.json")
    meta = {"schema": SCHEMA, **{f"config.{k}": v for k, v in config.items()}}
    meta.update({f"version.{k}": v for k, v in versions.items()})
    page = write_html(
        [to_jsonable(r.to_dict()) for r in results], out, live=to_jsonable(live), meta=meta
    )
    return {
        "results": out / "results.json",
        "timings": out / "timings.json",
        "html": page,
    }


def run_lab(
    cfg: LabConfig, only: str | Iterable[str] | None = None, progress: bool = True
) -> list[ExperimentResult]:
    """Run the experiments (all, or ``only``), write the outputs, return the results.

    Args:
        cfg: the configuration (preset, seeds, device, output directory, dataset).
        only: experiment ids (``"E1,E7"`` or a list); None runs them all.
        progress: show a rich progress bar (on stderr).

    Raises:
        ValueError: unknown experiment id, or a CUDA device that is not available.
    """
    ids = resolve_only(only)
    check_device(cfg.device)
    results: list[ExperimentResult] = []
    wall: dict[str, float] = {}
    if progress:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task("lab", total=len(ids) + 1)
            for exp_id in ids:
                bar.update(task, description=f"{exp_id} {EXPERIMENTS[exp_id].title}")
                result, seconds = _run_one(exp_id, cfg)
                results.append(result)
                wall[exp_id] = seconds
                bar.console.print(
                    f"  {exp_id}: {result.verdict:<13} {result.summary}  [dim]({seconds:.1f} s)"
                )
                bar.advance(task)
            bar.update(task, description="live checks and report")
            write_outputs(results, cfg, wall=wall)
            bar.advance(task)
    else:
        for exp_id in ids:
            result, seconds = _run_one(exp_id, cfg)
            results.append(result)
            wall[exp_id] = seconds
        write_outputs(results, cfg, wall=wall)
    return results


# --------------------------------------------------------------------------------------
# Terminal table
# --------------------------------------------------------------------------------------

_STYLE = {"supported": "green", "not supported": "red", "mixed": "yellow", "n/a": "dim"}


def claims_table(
    results: Sequence[ExperimentResult],
    live: Sequence[Mapping[str, Any]] | None = None,
    *,
    show_text: bool = True,
) -> Any:
    """A ``rich.table.Table``: one row per (claim, experiment), with verdict and key number.

    ``live`` panels (default: none) add rows for C1, C2, C13, C14. ``show_text=False``
    leaves out the column with the claim's text (for narrow terminals).
    """
    from rich.table import Table

    from deadrelu.lab.html import CLAIM_TEXT, claim_rows

    rows = claim_rows([r.to_dict() for r in results], live or ())
    table = Table(title="deadrelu lab: claims")
    table.add_column("claim", no_wrap=True)
    if show_text:
        table.add_column("the notes say")
    table.add_column("where", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("key number")
    for claim, where, verdict, summary in rows:
        style = _STYLE.get(verdict, "")
        cells = [claim, CLAIM_TEXT.get(claim, "")] if show_text else [claim]
        badge = f"[{style}]{verdict}[/{style}]" if style else verdict
        table.add_row(*cells, where, badge, summary)
    return table
