"""deadrelu: find, explain and cure dead ReLU units in PyTorch models.

The public API is flat: ``import deadrelu as dr``.
"""

from deadrelu import activations, classify
from deadrelu.activations import Activation, ActivationSpec, get, make_module

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "ActivationSpec",
    "__version__",
    "activations",
    "classify",
    "get",
    "make_module",
]
