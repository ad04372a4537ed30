"""Importing this package registers every experiment: each module of this package is
imported (in name order) and registers itself in ``deadrelu.lab.core.REGISTRY``.

Adding an experiment means adding one module here (``e12_name.py`` calling
``register(Experiment(...))``); nothing else lists it. The live checks (L1, L13, L14) are
in ``live_checks``. The registry keeps its own order (live checks, then E1, E2, ...).
"""

from __future__ import annotations

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
