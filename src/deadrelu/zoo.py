"""Importing the model zoos (torchvision, timm, Hugging Face transformers) on any torch build.

The torchvision wheels on PyPI are built against CUDA torch: on a CPU-only torch their C
extension (``torchvision/_C.so``, the detection ops nms, roi_align, ...) cannot load, and
``import torchvision`` then fails with ``operator torchvision::nms does not exist`` while
registering fake kernels for those ops. The classification models deadrelu scans never call
the C ops, so :func:`import_torchvision` declares the two op schemas whose registration
fails (``torchvision::nms``, ``torchvision::qnms``) when the extension did not load, then
imports torchvision: models work; the detection ops raise when called.
"""

from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType

import torch

__all__ = ["import_torchvision"]

logger = logging.getLogger(__name__)

#: Schemas of the torchvision ops whose fake-kernel registration runs at import.
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_STUB: list[torch.library.Library] = []  # kept alive: dropping a Library removes its ops


def import_torchvision() -> ModuleType:
    """``import torchvision``, also where its C extension cannot load on this torch build.

    Raises:
        ImportError: torchvision is not installed (install the ``zoo`` extra:
            ``pip install 'deadrelu[zoo]'``).
    """
    try:
        return importlib.import_module("torchvision")
    except ModuleNotFoundError as exc:
        raise ImportError(
            "torchvision is not installed: pip install 'deadrelu[zoo]' (or torchvision "
            "built for your torch)"
        ) from exc
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or _STUB:
            raise
        logger.info("torchvision's C ops did not load (%s); declaring stubs for them", exc)
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        lib.define(schema)
    _STUB.append(lib)
    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod]
    return importlib.import_module("torchvision")
