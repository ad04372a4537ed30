"""The lab: datasets, a batched trainer, one experiment per claim, verdicts, the report.

An experiment is an :class:`Experiment` (metadata declared once; ``sweep`` / ``judge`` /
``figure`` steps) registered with :func:`register` in :data:`REGISTRY`; importing
``deadrelu.lab.experiments`` registers them all. :func:`deadrelu.lab.runner.run_lab` runs
them. Old-style experiments (``@experiment``, :data:`EXPERIMENTS`) still run until
converted.
"""

from deadrelu.lab.core import (
    EXPERIMENTS,
    REGISTRY,
    ClaimVerdict,
    Experiment,
    ExperimentResult,
    ExperimentSpec,
    Judgement,
    LabConfig,
    SeedIndex,
    Sweep,
    Verdict,
    experiment,
    register,
    save_figure,
)

__all__ = [
    "EXPERIMENTS",
    "REGISTRY",
    "ClaimVerdict",
    "Experiment",
    "ExperimentResult",
    "ExperimentSpec",
    "Judgement",
    "LabConfig",
    "SeedIndex",
    "Sweep",
    "Verdict",
    "experiment",
    "register",
    "save_figure",
]
