"""Checkpoints of a scan in progress, so that a long scan resumes after a crash.

:func:`deadrelu.scan.scan` ``(checkpoint=path)`` keeps a :class:`ScanState` (its per-site
accumulators, the batches read and run, the tokens, the sites) in one file, rewritten
atomically (a temporary file in the same folder, then ``os.replace``) every
``checkpoint_every`` batches and at the end. A crash leaves the previous complete file.
Starting the same scan with the same path resumes from it.

Under ``torch.distributed`` with more than one process each rank keeps its own file,
``path`` with ``.rank{r}`` appended (``r`` the global rank, :func:`checkpoint_path`): the
accumulators stored are the rank's own, before the end-of-scan all-reduce.

The file holds only tensors, strings, numbers and lists/dicts of them, and is read with
``torch.load(weights_only=True)``. A :func:`fingerprint` of the model and of the options
that change the statistics is stored with it; resuming with another model (class,
parameter names/shapes/dtypes, or values: a probe of the first elements of every
parameter), ``detail``, ``mask``, ``functional``, ``keep_mode`` or ``unit_dim`` raises
ValueError naming what differs (:func:`check_fingerprint`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deadrelu import activations
from deadrelu.capture import Site
from deadrelu.stats import DETAIL_LEVELS, UnitStats

__all__ = [
    "FORMAT",
    "ScanState",
    "check_fingerprint",
    "checkpoint_path",
    "fingerprint",
]

#: Stored in every checkpoint; a file without it (or with another) is refused.
FORMAT = "deadrelu.scan-checkpoint/1"

#: Elements of each parameter that :func:`fingerprint` hashes (cheap, and any change of
#: the weights, e.g. another fine-tune of the same architecture, shows in them).
_PROBE = 64


def checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """The file this process uses for ``scan(checkpoint=path)``: ``path`` itself, or under
    ``torch.distributed`` with more than one process ``path`` + ``.rank{global rank}``."""
    import torch.distributed as dist

    p = Path(path)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return p.with_name(f"{p.name}.rank{dist.get_rank()}")
    return p


def fingerprint(model: nn.Module, **options: Any) -> dict[str, str]:
    """What must match for a checkpoint to be resumed: ``model`` (its class; the names,
    shapes and dtypes of its parameters and buffers; a hash of the first elements of
    each parameter) and the scan ``options`` (their ``repr``)."""
    params = list(model.named_parameters())
    layout = hashlib.sha256()
    for name, t in [*params, *model.named_buffers()]:
        layout.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    values = hashlib.sha256()
    if params:
        with torch.no_grad():
            probe = torch.cat([p.detach().reshape(-1)[:_PROBE].double() for _, p in params])
        values.update(probe.cpu().numpy().tobytes())
    dtypes = sorted({str(p.dtype) for _, p in params})
    return {
        "model": type(model).__name__,
        "parameters": layout.hexdigest()[:16],
        "dtype": ",".join(dtypes),
        "weights": values.hexdigest()[:16],
        **{k: repr(v) for k, v in options.items()},
    }


_WHAT = {
    "model": "model class",
    "parameters": "parameter names/shapes (the architecture)",
    "dtype": "parameter dtype",
    "weights": "weights",
}


def check_fingerprint(saved: Mapping[str, str], now: Mapping[str, str], path: Path) -> None:
    """Raise ValueError naming the first difference between a checkpoint's fingerprint
    and this scan's."""
    for key in dict.fromkeys([*now, *saved]):
        if saved.get(key) != now.get(key):
            what = _WHAT.get(key, f"scan option {key}=")
            raise ValueError(
                f"checkpoint {str(path)!r} was written by another scan: its {what} "
                f"{saved.get(key)} differs from this scan's {now.get(key)}. Resume with "
                f"the same model and options, or delete the file (or pass another "
                f"checkpoint path) to start afresh"
            )


@dataclass
class ScanState:
    """Everything a scan needs to go on from where it stopped.

    Attributes:
        fingerprint: :func:`fingerprint` of the model and options.
        read: batches taken from ``data`` so far (empty ones included): a resumed scan
            skips this many.
        batches: forwards run.
        skipped_empty: empty batches skipped.
        tokens: tokens scanned (None: the batches carry no tokens).
        exhausted: ``data`` ran out (the scan was complete, not stopped by a limit).
        stats: per-site accumulators, in first-call order.
        sites: the :class:`~deadrelu.capture.Site` of every key of ``stats``.
        kernels: ``{site: names of the kernels that reduced it}``.
        masked_sites: sites restricted to real tokens (see :mod:`deadrelu.tokens`).
        unmasked_sites: sites that ran on masked batches but were not restricted to the
            real tokens (no mask of their own, or not lined up with it: see
            :class:`deadrelu.tokens.MaskScopes`).
    """

    fingerprint: dict[str, str]
    read: int = 0
    batches: int = 0
    skipped_empty: int = 0
    tokens: int | None = None
    exhausted: bool = False
    stats: dict[str, UnitStats] = field(default_factory=dict)
    sites: dict[str, Site] = field(default_factory=dict)
    kernels: dict[str, list[str]] = field(default_factory=dict)
    masked_sites: list[str] = field(default_factory=list)
    unmasked_sites: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's content (tensors, strings, numbers, lists and dicts only)."""
        return {
            "format": FORMAT,
            "fingerprint": dict(self.fingerprint),
            "read": self.read,
            "batches": self.batches,
            "skipped_empty": self.skipped_empty,
            "tokens": self.tokens,
            "exhausted": self.exhausted,
            # the accumulators as they are (no copy; untracked fields stay one element)
            "stats": {
                name: {
                    **{k: getattr(s, k) for k in UnitStats.REDUCE},
                    "detail": torch.tensor(DETAIL_LEVELS.index(s.detail)),
                }
                for name, s in self.stats.items()
            },
            "sites": {
                name: [str(site.activation), site.unit_dim, site.kind, site.module]
                for name, site in self.sites.items()
            },
            "kernels": {k: list(v) for k, v in self.kernels.items()},
            "masked_sites": list(self.masked_sites),
            "unmasked_sites": list(self.unmasked_sites),
        }

    def save(self, path: Path) -> None:
        """Write the checkpoint to ``path`` atomically: into a temporary file next to it,
        flushed to disk, then renamed over ``path`` (readers see the old or the new file,
        never a partial one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(self.to_dict(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @classmethod
    def load(cls, path: Path, device: torch.device) -> ScanState:
        """Read a checkpoint written by :meth:`save`; the accumulators go to ``device``.

        Raises:
            ValueError: the file is not a deadrelu scan checkpoint."""
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"checkpoint {str(path)!r} cannot be read as a deadrelu scan checkpoint "
                f"({type(exc).__name__}: {exc}); delete it or pass another path"
            ) from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(
                f"checkpoint {str(path)!r} is not a deadrelu scan checkpoint (format "
                f"{raw.get('format') if isinstance(raw, dict) else type(raw).__name__!r}, "
                f"expected {FORMAT!r}); delete it or pass another path"
            )
        sites: dict[str, Site] = {}
        for name, (act, unit_dim, kind, module) in raw["sites"].items():
            activation = activations.get(act)
            assert activation is not None
            sites[name] = Site(name, activation, unit_dim, kind, module)
        return cls(
            fingerprint=dict(raw["fingerprint"]),
            read=int(raw["read"]),
            batches=int(raw["batches"]),
            skipped_empty=int(raw["skipped_empty"]),
            tokens=None if raw["tokens"] is None else int(raw["tokens"]),
            exhausted=bool(raw["exhausted"]),
            stats={
                name: UnitStats.from_state_dict(state, device)
                for name, state in raw["stats"].items()
            },
            sites=sites,
            kernels={k: list(v) for k, v in raw["kernels"].items()},
            masked_sites=list(raw["masked_sites"]),
            unmasked_sites=list(raw["unmasked_sites"]),
        )
