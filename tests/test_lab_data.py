"""The lab's datasets: offline, seeded, standardised."""

from __future__ import annotations

import pytest
import torch

from deadrelu.lab import data as lab_data
from deadrelu.lab.data import DATASETS, load


@pytest.mark.parametrize(
    ("name", "n_train", "n_test", "dim"),
    [("mnist1d", 4000, 1000, 40), ("digits", 1438, 359, 64), ("synthetic", 4000, 1000, 40)],
)
def test_shapes_types_and_labels(name: str, n_train: int, n_test: int, dim: int) -> None:
    d = load(name, 0)
    assert d.x_train.shape == (n_train, dim) and d.x_test.shape == (n_test, dim)
    assert d.y_train.shape == (n_train,) and d.y_test.shape == (n_test,)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.n_classes == 10 and d.n_features == dim
    assert set(d.y_train.tolist()) == set(range(10))
    # standardised with the training statistics
    assert d.x_train.mean(0).abs().max() < 1e-4
    std = d.x_train.std(0, unbiased=False)
    assert ((std - 1).abs() < 1e-3).logical_or(std == 0).all()


@pytest.mark.parametrize("name", list(DATASETS))
def test_same_seed_same_data_other_seed_other_data(name: str) -> None:
    a, b, c = load(name, 1), load(name, 1), load(name, 2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_returned_tensors_are_fresh_copies() -> None:
    a = load("synthetic", 3)
    a.x_train.zero_()
    assert load("synthetic", 3).x_train.abs().sum() > 0


def test_mnist1d_is_generated_not_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import mnist1d.data

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("get_dataset downloads; the lab must generate MNIST-1D")

    monkeypatch.setattr(mnist1d.data, "get_dataset", refuse)
    lab_data._cached.cache_clear()
    d = load("mnist1d", 5)
    assert d.x_train.shape == (4000, 40)


def test_unknown_dataset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: mnist1d, digits, synthetic"):
        load("cifar", 0)
