"""Importing this package registers every experiment in ``deadrelu.lab.core.EXPERIMENTS``.

Trainer engineer: E1-E5 below. Report engineer: E6-E10 lines at the end.
"""

# E1-E5 (trainer engineer)
from deadrelu.lab.experiments import e1_learning_rate, e2_bias, e3_irreversibility  # noqa: F401, I001
from deadrelu.lab.experiments import e4_remedies, e5_leaky_slope  # noqa: F401

# E6-E10 (report engineer)
from deadrelu.lab.experiments import e6_prelu, e7_elu, e8_selu, e9_cost, e10_born_dead  # noqa: F401
