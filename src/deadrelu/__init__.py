"""deadrelu: find, explain and cure dead ReLU units in PyTorch models.

The public API is flat::

    import deadrelu as dr

    report = dr.scan(model, loader)          # which units are dead, dormant, saturated
    with dr.Monitor(model) as mon:           # the same, during training
        ...
    dr.explain(model, report, data=loader)   # why each unit died
    dr.certify(model, dr.Box.from_data(x))   # dead for *every* input in a box
    dr.recycle(model, report, optimizer)     # ReDo: re-initialise dead units, same outputs

The lab (``deadrelu.lab``) is imported on demand, not here.
"""

from deadrelu import activations, advice, classify, init, reference, remedies
from deadrelu.activations import (
    Activation,
    ActivationSpec,
    get,
    make_module,
    register_module,
)
from deadrelu.advice import Advice, suggest
from deadrelu.born_dead import born_dead_rate
from deadrelu.capture import Site, attach
from deadrelu.certify import Box, Certificate, certify
from deadrelu.explain import Explanation, UpdateTracker, explain
from deadrelu.init import gain, init_for, kaiming_init_, lecun_normal_, rai_init_
from deadrelu.monitor import Monitor, MonitorWarning
from deadrelu.remedies import init_bias_, recycle, swap_activations
from deadrelu.report import Report
from deadrelu.scan import scan
from deadrelu.stats import UnitStats

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "ActivationSpec",
    "Advice",
    "Box",
    "Certificate",
    "Explanation",
    "Monitor",
    "MonitorWarning",
    "Report",
    "Site",
    "UnitStats",
    "UpdateTracker",
    "__version__",
    "activations",
    "advice",
    "attach",
    "born_dead_rate",
    "certify",
    "classify",
    "explain",
    "gain",
    "get",
    "init",
    "init_bias_",
    "init_for",
    "kaiming_init_",
    "lecun_normal_",
    "make_module",
    "rai_init_",
    "recycle",
    "reference",
    "register_module",
    "remedies",
    "scan",
    "suggest",
    "swap_activations",
]
