"""The lab: datasets, a batched trainer, one experiment per claim, verdicts, the report.

An experiment is an :class:`Experiment` (metadata declared once; ``sweep`` / ``judge`` /
``figure`` steps) registered with :func:`register` in :data:`REGISTRY`; importing
``deadrelu.lab.experiments`` registers them all. :func:`deadrelu.lab.runner.run_lab` runs
them.
"""

from deadrelu.lab.core import (
    REGISTRY,
    ClaimVerdict,
    Experiment,
    ExperimentResult,
    Judgement,
    LabConfig,
    SeedIndex,
    Sweep,
    Verdict,
    register,
    save_figure,
)

__all__ = [
    "REGISTRY",
    "ClaimVerdict",
    "Experiment",
    "ExperimentResult",
    "Judgement",
    "LabConfig",
    "SeedIndex",
    "Sweep",
    "Verdict",
    "register",
    "save_figure",
]
