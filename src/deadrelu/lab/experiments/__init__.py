"""Importing this package registers every experiment: each module of this package is
imported (in name order), and registers itself, the new shape in
``deadrelu.lab.core.REGISTRY``, old-style ones (until converted) in ``EXPERIMENTS``.

Adding an experiment means adding one module here (``e12_name.py`` calling
``register(Experiment(...))``); nothing else lists it. The live checks (L1, L13, L14) are
in ``live_checks``. The registries keep their own order (live checks, then E1, E2, ...).
"""

from __future__ import annotations

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
