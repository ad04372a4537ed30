"""The lab's contract: configuration, result object, experiment registry, figure helper.

Every experiment is an :class:`Experiment` (metadata declared once, ``sweep`` / ``judge`` /
``figure`` steps) registered with :func:`register` in :data:`REGISTRY`; the runner
(:mod:`deadrelu.lab.runner`) runs it and builds its :class:`ExperimentResult`. The live
checks (ids ``L1``, ``L13``, ``L14``) are experiments of the same shape. Experiment modules
live in ``deadrelu/lab/experiments/``; importing ``deadrelu.lab.experiments`` registers
them all.

Reproducibility: ``ExperimentResult.numbers`` holds only numbers that a rerun with the same
config reproduces exactly; wall-clock measurements go in ``ExperimentResult.timings``, which
:meth:`ExperimentResult.to_dict` keeps under its own key so a report writer can leave it out
of the reproducible file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from deadrelu.lab.verdicts import mean_ci

__all__ = [
    "PRESETS",
    "REGISTRY",
    "Arm",
    "ClaimVerdict",
    "Experiment",
    "ExperimentResult",
    "Judgement",
    "LabConfig",
    "SeedIndex",
    "Sweep",
    "Verdict",
    "VerdictSource",
    "annotate",
    "bars",
    "ci_dict",
    "new_figure",
    "register",
    "rounded",
    "save_figure",
    "sweep_from_arms",
]

#: Verdict of an experiment on its claims.
Verdict = Literal["supported", "not supported", "mixed", "n/a"]

#: Where a verdict comes from: reproducible ``numbers``, or wall-clock ``timings`` (then it is
#: kept out of ``results.json`` and written to ``timings.json``).
VerdictSource = Literal["numbers", "timings"]

#: Valid presets: ``tiny`` (test suite, seconds), ``quick`` (``make demo``), ``full``.
PRESETS: tuple[str, ...] = ("tiny", "quick", "full")

#: Default number of seeds per preset.
_DEFAULT_SEEDS: dict[str, int] = {"tiny": 2, "quick": 5, "full": 10}

#: Figure resolution, fixed so that files are reproducible.
FIGURE_DPI = 100

T = TypeVar("T")


@dataclass
class LabConfig:
    """How the lab runs.

    Attributes:
        preset: ``"tiny"`` (test suite), ``"quick"`` (``make demo``) or ``"full"``.
        seeds: seeds (repetitions) per setting; None means the preset's default
            (:attr:`n_seeds`).
        device: ``"cpu"`` or ``"cuda"``.
        out: output directory; figures go to ``out / "figures"``.
        dataset: dataset name for :func:`deadrelu.lab.data.load` (``"mnist1d"``,
            ``"digits"``, ``"synthetic"``).
    """

    preset: str = "quick"
    seeds: int | None = None
    device: str = "cpu"
    out: Path = field(default_factory=lambda: Path("report"))
    dataset: str = "mnist1d"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {list(PRESETS)}")
        if self.seeds is not None and self.seeds < 1:
            raise ValueError(
                f"seeds must be >= 1 (or None for the preset default), got {self.seeds}"
            )
        self.out = Path(self.out)

    @property
    def n_seeds(self) -> int:
        """Seeds per setting: ``seeds`` if given, else the preset default (tiny 2, quick 5,
        full 10)."""
        return self.seeds if self.seeds is not None else _DEFAULT_SEEDS[self.preset]

    def size(self, *, tiny: T, quick: T, full: T) -> T:
        """Pick the value for the current preset, e.g. ``cfg.size(tiny=50, quick=400,
        full=2000)``."""
        return {"tiny": tiny, "quick": quick, "full": full}[self.preset]

    @property
    def figures_dir(self) -> Path:
        """``out / "figures"`` (not created here; :func:`save_figure` creates it)."""
        return self.out / "figures"


@dataclass
class ExperimentResult:
    """What one experiment found.

    Attributes:
        id: experiment id, ``"E1"``.
        claims: claim ids from CLAIMS.md, ``("C3", "C6")``.
        title: short title.
        question: the question the experiment answers, one or two sentences.
        method: how, in words (data, model, budget, seeds, what is measured).
        numbers: JSON-able, reproducible numbers (same config -> same values).
        verdict: ``"supported"``, ``"not supported"``, ``"mixed"`` or ``"n/a"``.
        verdict_rule: the rule, in words, exactly as the code applies it.
        summary: one line with the key number, for the claims table.
        figures: PNG file names relative to ``cfg.out``.
        caveats: where our setting differs from the claim's, and other limits.
        timings: wall-clock numbers (non-reproducible), kept apart from ``numbers``.
        claim_verdicts: one JSON-able record per claim, filled by the runner: ``verdict``,
            ``rule``, ``summary``, ``evidence``, ``stability`` (share of bootstrap resamples
            of the seeds giving the same verdict, ``fragile``, ``why``; None when not
            resampled), ``source`` (``"numbers"`` or ``"timings"``), ``preset``,
            ``n_seeds``.
        derived: JSON-able numbers the judge derived (intervals, per-layer summaries).
        preset: the preset the numbers came from.
        n_seeds: length of the seed axis the verdicts resample (None: not known).
        style: ``"v2"`` (an :class:`Experiment`) or ``"v1"`` (an old ``run(cfg)``).
    """

    id: str
    claims: tuple[str, ...]
    title: str
    question: str
    method: str
    numbers: dict[str, Any]
    verdict: Verdict
    verdict_rule: str
    summary: str
    figures: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    claim_verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    derived: dict[str, Any] = field(default_factory=dict)
    preset: str = ""
    n_seeds: int | None = None
    style: str = "v1"

    def to_dict(self, *, include_timings: bool = True) -> dict[str, Any]:
        """A JSON-able dict; ``timings`` is left out when ``include_timings`` is False."""
        d: dict[str, Any] = {
            "id": self.id,
            "claims": list(self.claims),
            "title": self.title,
            "question": self.question,
            "method": self.method,
            "numbers": self.numbers,
            "verdict": self.verdict,
            "verdict_rule": self.verdict_rule,
            "summary": self.summary,
            "figures": list(self.figures),
            "caveats": list(self.caveats),
            "claim_verdicts": self.claim_verdicts,
            "derived": self.derived,
            "preset": self.preset,
            "n_seeds": self.n_seeds,
            "style": self.style,
        }
        if include_timings:
            d["timings"] = self.timings
        return d


_ID = re.compile(r"^([EL])(\d+)$")


def _order(exp_id: str) -> tuple[int, int]:
    """Sort key: live checks (``L1``, ``L14``) first, then experiments by number."""
    m = _ID.match(exp_id)
    if m is None:
        raise ValueError(
            f"experiment id must look like 'E7' (or 'L1' for a live check), got {exp_id!r}"
        )
    return (0 if m.group(1) == "L" else 1, int(m.group(2)))


# --------------------------------------------------------------------------------------
# One shape for every experiment (lab v2)
# --------------------------------------------------------------------------------------

#: Indices into an experiment's seed axis, with repetition (a bootstrap resample), or None
#: for "every seed once, in order".
SeedIndex = Sequence[int] | None


@dataclass
class Sweep:
    """What an experiment's ``sweep`` step measured.

    Attributes:
        numbers: JSON-able, reproducible raw numbers (same config -> same values). Every
            per-seed quantity is a list indexed by seed (length ``n_seeds``), so that
            ``judge`` can resample seeds.
        n_seeds: length of the seed axis in ``numbers`` (the bootstrap resamples it).
        timings: wall-clock numbers (not reproducible), kept out of ``results.json``.
        axis: what one step of the resampled axis is, in words (``"seeds"``; E9's are
            timing ``"rounds"``), for the claims table's "from" column.
    """

    numbers: dict[str, Any]
    n_seeds: int
    timings: dict[str, Any] = field(default_factory=dict)
    axis: str = "seeds"


@dataclass
class ClaimVerdict:
    """The verdict on one claim from one experiment.

    Attributes:
        verdict: ``"supported"``, ``"not supported"``, ``"mixed"`` or ``"n/a"``.
        rule: the rule, in words, exactly as the code applies it.
        summary: one line with the key number(s), for the claims table.
        evidence: JSON-able numbers behind the verdict (effects, intervals, p-values).
    """

    verdict: Verdict
    rule: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class Judgement:
    """What ``judge`` concluded: one :class:`ClaimVerdict` per claim of the experiment, and
    derived JSON-able numbers (intervals, per-layer summaries) for the report."""

    claims: dict[str, ClaimVerdict]
    derived: dict[str, Any] = field(default_factory=dict)


SweepFn = Callable[[LabConfig], Sweep]
#: ``judge(sweep, seeds)``: ``seeds`` is None (every seed once) or indices into the seed
#: axis with repetition; the verdicts must use only those seeds. Pure: no training here.
JudgeFn = Callable[[Sweep, SeedIndex], Judgement]
#: ``figure(cfg, sweep, judgement) -> [PNG paths relative to cfg.out]``.
FigureFn = Callable[[LabConfig, Sweep, Judgement], list[str]]


@dataclass(frozen=True)
class Arm:
    """One independent piece of an experiment's sweep (see :attr:`Experiment.arms`).

    Attributes:
        name: what it runs, in words, unique within the experiment (``"high lr: relu"``);
            shown in the progress display.
        run: the work, a function of no arguments returning the arm's value for
            ``assemble``. Picklable for a remote executor: a ``functools.partial`` of a
            module-level function and picklable arguments (the :class:`LabConfig`, names).
            It runs in the lab's deterministic context, so it must seed its own generators
            (as a sweep does) and use no state another arm leaves behind.
    """

    name: str
    run: Callable[[], Any]


#: ``arms(cfg) -> [Arm, ...]``: the independent pieces of the sweep, in a fixed order.
ArmsFn = Callable[[LabConfig], Sequence[Arm]]
#: ``assemble(cfg, values) -> Sweep``: ``values[i]`` is what ``arms(cfg)[i].run()`` returned.
AssembleFn = Callable[[LabConfig, list[Any]], Sweep]


def sweep_from_arms(cfg: LabConfig, arms: ArmsFn, assemble: AssembleFn) -> Sweep:
    """Every arm here, in order, then ``assemble``: the sweep of an experiment declared in
    arms (its ``sweep`` can be ``sweep_from_arms(cfg, arms, assemble)``)."""
    return assemble(cfg, [arm.run() for arm in arms(cfg)])


@dataclass(frozen=True)
class Experiment:
    """One experiment, its metadata declared once (in the spirit of timm's model registry).

    The runner calls ``sweep(cfg)`` once, ``judge(sweep, None)`` for the verdicts,
    ``judge(sweep, idx)`` on bootstrap resamples of the seeds for each verdict's stability,
    and ``figure(cfg, sweep, judgement)``; it builds the :class:`ExperimentResult`.
    ``method`` may hold ``{placeholders}`` filled from ``sweep.numbers`` by
    ``method.format_map(numbers)`` (keys that are missing stay as written).

    Optional (added for the runner; defaults fit most experiments):
        resamples: bootstrap resamples of the seeds for each verdict's stability (the
            judge runs this many extra times: keep it pure arithmetic, or lower this).
        verdict_source: ``"timings"`` when the verdicts are computed from wall-clock
            ``sweep.timings`` (E9): they are then kept out of ``results.json`` and shown
            in the report marked "timing-based".
        arms, assemble: an experiment whose sweep is made of independent pieces (each a
            few batched-trainer calls) declares them, so that an executor can run them as
            separate tasks: the runner then calls ``arms(cfg)``, runs every arm (anywhere,
            in any order, each in the lab's deterministic context) and builds the sweep
            with ``assemble(cfg, values)`` (values in the arms' order) instead of calling
            ``sweep(cfg)``. The contract: that sweep equals ``sweep(cfg)`` exactly (write
            ``sweep`` as :func:`sweep_from_arms`). Both or neither.
    """

    id: str
    claims: tuple[str, ...]
    title: str
    question: str
    method: str
    sweep: SweepFn
    judge: JudgeFn
    figure: FigureFn | None = None
    caveats: tuple[str, ...] = ()
    resamples: int = 200
    verdict_source: VerdictSource = "numbers"
    arms: ArmsFn | None = None
    assemble: AssembleFn | None = None

    def __post_init__(self) -> None:
        if (self.arms is None) != (self.assemble is None):
            raise ValueError(
                f"experiment {self.id}: give both arms and assemble (the arms' values are "
                "nothing without assemble), or neither"
            )


#: Registered lab-v2 experiments by id, ordered by number (see :func:`register`).
REGISTRY: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    """Register ``exp`` in :data:`REGISTRY` (kept sorted by number); returns it, so a module
    can write ``EXPERIMENT = register(Experiment(...))``. Registering an id twice with a
    different object raises ``ValueError``."""
    _order(exp.id)
    if exp.id in REGISTRY and REGISTRY[exp.id] is not exp:
        raise ValueError(f"experiment {exp.id} is already registered")
    REGISTRY[exp.id] = exp
    ordered = sorted(REGISTRY.items(), key=lambda kv: _order(kv[0]))
    REGISTRY.clear()
    REGISTRY.update(ordered)
    return exp


def save_figure(fig: Any, cfg: LabConfig, name: str) -> str:
    """Save a matplotlib figure as ``cfg.out / "figures" / name`` (PNG) and close it.

    Fixed dpi and no metadata (no software version, no date), so the same figure gives the
    same bytes. Returns the path relative to ``cfg.out`` (``"figures/e1_lr.png"``), the form
    :attr:`ExperimentResult.figures` holds.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not name.endswith(".png"):
        name = f"{name}.png"
    cfg.figures_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.figures_dir / name
    fig.savefig(path, dpi=FIGURE_DPI, format="png", metadata={"Software": None})
    plt.close(fig)
    return f"figures/{name}"


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.6) -> Any:
    """A ``(fig, axes)`` pair on the Agg backend (lazy matplotlib import)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)


def bars(
    ax: Any,
    x: Sequence[float],
    heights: Sequence[float | None],
    *,
    lo: Sequence[float | None] | None = None,
    hi: Sequence[float | None] | None = None,
    width: float = 0.8,
    color: Any = "#4a7ab5",
    label: str | None = None,
) -> None:
    """A bar chart on which a zero-height bar and a missing value look different.

    ``heights[i]`` None or NaN (no data: the run diverged, the setting was not run) draws a
    hatched grey outline over the axis height with "no data"; a height of exactly 0 draws
    a thick stub at 0 with "0", so it is not mistaken for a missing bar. ``lo`` / ``hi``
    (the interval's ends, same length) draw error bars where given.
    """
    xs = list(x)
    hs = [None if h is None or not math.isfinite(float(h)) else float(h) for h in heights]
    shown = [h if h is not None else 0.0 for h in hs]
    ax.bar(xs, shown, width=width, color=color, label=label)
    if lo is not None and hi is not None:
        for xi, h, a, b in zip(xs, hs, lo, hi, strict=True):
            if h is not None and a is not None and b is not None:
                ax.errorbar(
                    [xi],
                    [h],
                    yerr=[[max(h - a, 0.0)], [max(b - h, 0.0)]],
                    color="k",
                    capsize=3,
                    lw=1,
                )
    top = max([h for h in hs if h is not None] + [1e-12])
    for xi, h in zip(xs, hs, strict=True):
        if h is None:
            ax.bar([xi], [top], width=width, fill=False, hatch="//", edgecolor="#999", lw=0.8)
            annotate(ax, xi, top / 2, "no data", rotation=90, color="#555")
        elif h == 0.0:
            ax.plot(
                [xi - width / 2, xi + width / 2], [0, 0], color=color, lw=4, solid_capstyle="butt"
            )
            annotate(ax, xi, 0.0, "0", va="bottom")


def annotate(ax: Any, x: float, y: float, text: str, **kw: Any) -> None:
    """A legible label at data point ``(x, y)``: 8 pt, on a white box, centred above the
    point unless ``ha`` / ``va`` / ``xytext`` say otherwise (E1's "4/5 diverged")."""
    opts: dict[str, Any] = {
        "ha": "center",
        "va": "bottom",
        "fontsize": 8,
        "textcoords": "offset points",
        "xytext": (0, 3),
        "bbox": {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
    }
    opts.update(kw)
    ax.annotate(text, (x, y), **opts)


def rounded(x: float, digits: int = 6) -> float | None:
    """``x`` to ``digits`` significant digits for the JSON output; None if not finite."""
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def ci_dict(
    samples: Any,
    *,
    resolution: float | None = None,
    bounds: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """``{"mean", "lo", "hi", "n"}``: the mean and 95 % t-interval of one number per seed
    (``deadrelu.lab.verdicts.mean_ci``, with its ``resolution`` and ``bounds``), rounded,
    non-finite bounds as None."""
    values = [float(v) for v in samples]
    if not values:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    m, lo, hi = mean_ci(values, resolution=resolution, bounds=bounds)
    return {"mean": rounded(m), "lo": rounded(lo), "hi": rounded(hi), "n": len(values)}
