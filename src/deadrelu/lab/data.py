"""The lab's datasets, all generated or bundled locally: nothing is downloaded.

* ``"mnist1d"``: MNIST-1D (Greydanus 2020) *generated* by
  ``mnist1d.data.make_dataset`` with the package's default arguments and the given seed:
  4000 train / 1000 test, 40 features, 10 classes. ``mnist1d.data.get_dataset`` (which
  downloads) is never called.
* ``"digits"``: scikit-learn's bundled 8x8 digits (``load_digits``, 1797 samples, 64
  features, 10 classes), shuffled by the seed and split 80/20.
* ``"synthetic"``: a Gaussian mixture, 10 classes in 40 dimensions, class means drawn from
  the seed; 4000 train / 1000 test.

Every set is standardised per feature with the training mean and standard deviation.
``load(name, seed)`` is deterministic: the same name and seed give the same tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATASETS", "Dataset", "load"]


@dataclass(frozen=True)
class Dataset:
    """A train/test split as float32 features and int64 labels.

    Attributes:
        name: dataset name.
        x_train: ``(N_train, D)`` float32.
        y_train: ``(N_train,)`` int64 in ``[0, n_classes)``.
        x_test: ``(N_test, D)`` float32.
        y_test: ``(N_test,)`` int64.
        n_classes: number of classes.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        """D, the number of input features."""
        return int(self.x_train.shape[1])

    def to(self, device: str | torch.device) -> Dataset:
        """The same data on ``device``."""
        return Dataset(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.n_classes,
        )


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _mnist1d(seed: int) -> Arrays:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'mnist1d' dataset needs the mnist1d package: pip install 'deadrelu[lab]'"
        ) from exc
    args = get_dataset_args()
    args.seed = int(seed)
    data = make_dataset(args)  # generated locally; never get_dataset (it downloads)
    return data["x"], data["y"], data["x_test"], data["y_test"]


def _digits(seed: int) -> Arrays:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'digits' dataset needs scikit-learn: pip install 'deadrelu[lab]'"
        ) from exc
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    n_train = round(0.8 * len(y))
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _synthetic(seed: int, n_train: int = 4000, n_test: int = 1000) -> Arrays:
    rng = np.random.default_rng(seed)
    n_classes, dim = 10, 40
    means = rng.normal(0.0, 1.0, size=(n_classes, dim)) * 0.6
    y = rng.integers(0, n_classes, size=n_train + n_test)
    x = means[y] + rng.normal(0.0, 1.0, size=(n_train + n_test, dim))
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


#: Dataset generators by name: ``seed -> (x_train, y_train, x_test, y_test)`` arrays.
DATASETS: dict[str, Callable[[int], Arrays]] = {
    "mnist1d": _mnist1d,
    "digits": _digits,
    "synthetic": _synthetic,
}


@functools.lru_cache(maxsize=8)
def _cached(name: str, seed: int) -> Arrays:
    x_tr, y_tr, x_te, y_te = DATASETS[name](seed)
    x_tr = np.asarray(x_tr, dtype=np.float64)
    x_te = np.asarray(x_te, dtype=np.float64)
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (
        ((x_tr - mean) / std).astype(np.float32),
        np.asarray(y_tr, dtype=np.int64),
        ((x_te - mean) / std).astype(np.float32),
        np.asarray(y_te, dtype=np.int64),
    )


def load(name: str = "mnist1d", seed: int = 0) -> Dataset:
    """Load dataset ``name`` generated (or shuffled) with ``seed``; see the module docstring.

    Returns fresh tensors (callers may modify them); the arrays behind them are cached per
    process, so loading the same set twice is cheap.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    x_tr, y_tr, x_te, y_te = _cached(name, int(seed))
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    return Dataset(
        name,
        torch.from_numpy(x_tr.copy()),
        torch.from_numpy(y_tr.copy()),
        torch.from_numpy(x_te.copy()),
        torch.from_numpy(y_te.copy()),
        n_classes,
    )
