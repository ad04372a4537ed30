"""The parts of :class:`deadrelu.monitor.Monitor`, each a small class with one job.

=================  ==================================================================
``sampling``       :class:`Sampler` (which steps count), :class:`CaptureHooks` (when
                   the capture hooks are registered)
``window``         :class:`SiteWindow` (one site's units over the sliding window and
                   the report panes), :class:`Panes`
``history``        :class:`History` (dead fraction per site and sampled step)
``zero_grad``      :class:`ZeroGradProbe` (producers, gradient hooks, the C2 check)
``alerts``         :class:`Alerts` (threshold crossings and blind spots, once each)
``checkpoint``     a state's entries, JSON form, and the up-front check against a model
=================  ==================================================================

The Monitor coordinates them: the capture callback feeds the sites' step buffers, and
:meth:`~deadrelu.monitor.Monitor.step` reduces across processes, folds the step into
every part, records the history and raises the alerts.
"""

from deadrelu.monitoring.alerts import Alerts, MonitorWarning
from deadrelu.monitoring.history import History
from deadrelu.monitoring.sampling import HOOK_MODES, CaptureHooks, Sampler
from deadrelu.monitoring.window import NEVER, Panes, SiteWindow
from deadrelu.monitoring.zero_grad import ZeroGradCheck, ZeroGradProbe

__all__ = [
    "HOOK_MODES",
    "NEVER",
    "Alerts",
    "CaptureHooks",
    "History",
    "MonitorWarning",
    "Panes",
    "Sampler",
    "SiteWindow",
    "ZeroGradCheck",
    "ZeroGradProbe",
]
