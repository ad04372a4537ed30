"""Feeding data to a model: what a batch is, how data yields batches, how a batch is run.

Every part of deadrelu that runs a user's model on a user's data (:func:`deadrelu.scan.scan`,
the remedies' probe forward, :func:`deadrelu.explain.explain`) reads batches by these rules.

Batches may be:

* a ``Tensor``: ``model(x)``;
* a ``tuple`` or ``list`` (``(inputs, targets)``, what a ``DataLoader`` yields): the first
  item is the input (a tensor, or a dict of keyword arguments);
* a ``dict`` (Hugging Face style): ``model(**batch)``.

``data`` is any iterable of batches (a ``DataLoader``, a list, a generator), a single
``Tensor`` or ``dict`` (one batch), a single ``tuple`` whose first item is a tensor or
dict (one ``(inputs, targets)`` batch; a *list* is always a sequence of batches), or a
callable: called once with no argument, it returns either an iterable of batches or one
batch; in the second case it is called again for each batch, and ``max_batches`` is
required.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Batch",
    "count_batches",
    "first_batch",
    "iter_batches",
    "model_device",
    "require_materialised",
    "run_batch",
    "split_batch",
    "to_device",
]

#: One batch: a tensor, an ``(inputs, targets, ...)`` tuple or list, or a dict of keyword
#: arguments.
Batch = Tensor | tuple[Any, ...] | list[Any] | Mapping[str, Any]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer, else CPU."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def _is_single_batch(obj: Any) -> bool:
    if isinstance(obj, (Tensor, Mapping)):
        return True
    return isinstance(obj, (tuple, list)) and bool(obj) and isinstance(obj[0], (Tensor, Mapping))


def require_materialised(model: nn.Module) -> None:
    """Raise ValueError if ``model`` has parameters or buffers on the meta device (no data)."""
    meta = [
        n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta
    ]
    if meta:
        raise ValueError(
            f"the model ({type(model).__name__}) has {len(meta)} tensors on the meta device "
            f"(e.g. {meta[0]!r}): they hold no values, so no unit can be measured. "
            "Materialise it first: model.to_empty(device='cpu') then initialise or load "
            "the weights (e.g. model.load_state_dict(...))"
        )


def iter_batches(data: Any, max_batches: int | None = None) -> Iterator[Any]:
    """The batches of ``data``, by the rules in the module docstring (``max_batches`` is
    needed only for a callable that returns one batch per call; it is not applied here)."""
    if isinstance(data, (Tensor, Mapping)) or (
        isinstance(data, tuple) and data and isinstance(data[0], (Tensor, Mapping))
    ):
        yield data  # one batch, e.g. an (x, y) tuple
        return
    if callable(data) and not isinstance(data, Iterable):
        first = data()
        if _is_single_batch(first):
            if max_batches is None:
                raise ValueError(
                    "data is a callable that returns one batch per call: pass max_batches "
                    "to say how many calls to make"
                )
            yield first
            for _ in range(max_batches - 1):
                yield data()
            return
        data = first
    if not isinstance(data, Iterable):
        raise TypeError(
            f"cannot iterate over data of type {type(data).__name__}: pass a DataLoader, a "
            f"list or generator of batches, a tensor, or a callable returning batches"
        )
    yield from data


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in it (nested in tuples, lists, dicts) moved to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def _unsupported(batch: Any) -> TypeError:
    return TypeError(
        f"unsupported batch of type {type(batch).__name__}: each batch must be a Tensor "
        f"(model(x)), a tuple/list whose first item is the input tensor or a dict of "
        f"keyword arguments (model(x) / model(**kw)), or a dict (model(**batch)); wrap "
        f"other data in a generator that yields one of these"
    )


def split_batch(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any], Tensor | None]:
    """batch -> (args, kwargs, the tensor whose first dim is the batch size)."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise _unsupported(batch)
        batch = batch[0]
    if isinstance(batch, Tensor):
        return (batch,), {}, batch
    if isinstance(batch, Mapping):
        kwargs = dict(batch)
        lead = next((v for v in kwargs.values() if isinstance(v, Tensor) and v.dim()), None)
        return (), kwargs, lead
    raise _unsupported(batch)


def count_batches(data: Any, max_batches: int | None) -> int | None:
    """Number of batches the scan will run at most, when known (``len(data)``,
    ``max_batches``), else None."""
    try:
        n: int | None = len(data) if not isinstance(data, (Tensor, Mapping)) else 1
    except TypeError:
        n = None
    if max_batches is not None:
        n = max_batches if n is None else min(n, max_batches)
    return n


def first_batch(data: Any) -> Any:
    """The first batch of ``data`` (anything :func:`deadrelu.scan.scan` takes)."""
    for batch in iter_batches(data, 1):
        return batch
    raise ValueError("data holds no batch")


def run_batch(model: nn.Module, batch: Any) -> Any:
    """``model(*args, **kwargs)`` for one batch, its tensors moved to the model's device."""
    args, kwargs, _ = split_batch(batch)
    device = model_device(model)
    return model(*to_device(args, device), **to_device(kwargs, device))
