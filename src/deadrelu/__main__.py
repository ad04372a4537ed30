"""``python -m deadrelu``: the command line (:func:`deadrelu.cli.main`), also what
``torchrun --nproc_per_node N -m deadrelu scan ...`` runs on every rank."""

from __future__ import annotations

import sys

from deadrelu.cli import main

if __name__ == "__main__":
    sys.exit(main())
