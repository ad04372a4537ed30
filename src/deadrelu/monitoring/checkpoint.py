"""The Monitor's checkpoint part: what a saved state holds, and whether it fits a model.

A state (:meth:`deadrelu.monitor.Monitor.state_dict`) is a dict of plain values and CPU
tensors; :func:`jsonify` / :func:`unjsonify` turn it into JSON-ready values and back
(each tensor as ``{"tensor": {"dtype", "shape", "data"}}``). :func:`check_sites` refuses,
before anything is restored, a state whose sites this model cannot have.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from deadrelu import activations
from deadrelu.capture import Site
from deadrelu.graph import plain_modules
from deadrelu.monitoring.window import SiteWindow
from deadrelu.report import tensor_from_json, tensor_to_json

__all__ = ["check_sites", "jsonify", "saved_site", "site_entry", "site_module", "unjsonify"]


def jsonify(obj: Any) -> Any:
    """Tensors anywhere in dicts/lists -> ``{"tensor": tensor_to_json(t)}``."""
    if isinstance(obj, Tensor):
        return {"tensor": tensor_to_json(obj)}
    if isinstance(obj, Mapping):
        return {k: jsonify(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonify(v) for v in obj]
    return obj


def unjsonify(obj: Any) -> Any:
    """Inverse of :func:`jsonify`."""
    if isinstance(obj, Mapping):
        if set(obj) == {"tensor"}:
            return tensor_from_json(obj["tensor"])
        return {k: unjsonify(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unjsonify(v) for v in obj]
    return obj


def site_module(name: str) -> str:
    """The module path a site name lives in: ``"blk.mlp:gelu#1"`` -> ``"blk.mlp"``."""
    return name.split("#", 1)[0].split(":", 1)[0]


def site_entry(win: SiteWindow, grad_last: Tensor | None, site: Site | None) -> dict[str, Any]:
    """One site's checkpoint entry: the window's state, ``grad_last`` and the Site."""
    entry = win.state_dict()
    if grad_last is not None:
        entry["grad_last"] = grad_last.detach().cpu().clone()
    if site is not None:
        entry["site"] = {
            "activation": str(site.activation),
            "kind": site.kind,
            "module": site.module,
        }
    return entry


def saved_site(name: str, entry: Mapping[str, Any]) -> Site | None:
    """The :class:`Site` saved with a site's entry (None in version-1 states)."""
    meta = entry.get("site")
    if meta is None:
        return None
    act = activations.get(meta["activation"])
    assert act is not None
    return Site(name, act, int(entry["unit_dim"]), meta["kind"], meta["module"])


def check_sites(
    model: nn.Module, saved: Mapping[str, Any], known: Mapping[str, SiteWindow]
) -> None:
    """Raise ValueError, naming them, on saved sites that cannot belong to ``model``: a
    site whose module the model lacks, or (for the ``known`` sites, seen running) another
    number of units."""
    modules = plain_modules(model)
    missing = [n for n in saved if site_module(n) not in modules]
    if missing:
        raise ValueError(
            f"the saved Monitor state has sites {missing} whose modules this model "
            f"({type(model).__name__}) does not have: it was saved from another "
            "model; load it into the same architecture"
        )
    wrong = [
        f"{n!r}: saved {int(e['last_active'].shape[0])}, model {known[n].units}"
        for n, e in saved.items()
        if n in known and int(e["last_active"].shape[0]) != known[n].units
    ]
    if wrong:
        raise ValueError(
            f"the saved Monitor state has other unit counts than this model "
            f"({'; '.join(wrong)}): load it into the same architecture"
        )
