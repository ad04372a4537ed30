"""Importing this package registers every experiment in ``deadrelu.lab.core.EXPERIMENTS``.

Trainer engineer: E1-E5 below. Report engineer: E6-E10 lines at the end.
"""

# E1-E5 (trainer engineer)
# (imports added as the modules land)

# E6-E10 (report engineer)
from deadrelu.lab.experiments import e6_prelu, e7_elu, e8_selu, e9_cost, e10_born_dead  # noqa: F401
