"""The lab: datasets, a batched trainer, one experiment per claim, verdicts, the report.

Import experiments through ``deadrelu.lab.experiments`` (registers them in
:data:`deadrelu.lab.core.EXPERIMENTS`).
"""

from deadrelu.lab.core import (
    EXPERIMENTS,
    ExperimentResult,
    ExperimentSpec,
    LabConfig,
    Verdict,
    experiment,
    save_figure,
)

__all__ = [
    "EXPERIMENTS",
    "ExperimentResult",
    "ExperimentSpec",
    "LabConfig",
    "Verdict",
    "experiment",
    "save_figure",
]
