"""Bad input gets a clear error (issue 11, item 11): each names the problem and the fix."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from deadrelu.monitor import Monitor
from deadrelu.report import Report
from deadrelu.scan import scan
from models import DeadMLP


def test_meta_device_model() -> None:
    with torch.device("meta"):
        model = DeadMLP()
    x = torch.rand(4, 8)
    with pytest.raises(ValueError, match=r"meta device.*to_empty"):
        scan(model, x)
    with pytest.raises(ValueError, match=r"meta device.*to_empty"):
        Monitor(model)


def test_an_x_y_tuple_is_one_batch() -> None:
    model = DeadMLP()
    x = model.make_batches(1)[0]
    y = torch.zeros(x.shape[0], dtype=torch.long)  # model(y) would fail: a target
    one = scan(model, (x, y))
    assert one.meta["batches"] == 1
    assert int(one.stats["relu1"].positions) == x.shape[0]
    assert {s: one.dead_units(s) for s in one.sites} == model.expected_dead
    # a list is a sequence of batches: [x, x] is two of them
    assert scan(model, [x, x]).meta["batches"] == 2


@pytest.mark.parametrize("bad", [1.5, 0, True, "2"])
def test_max_batches_must_be_a_positive_int(bad: object) -> None:
    model = DeadMLP()
    with pytest.raises(ValueError, match="max_batches"):
        scan(model, model.make_batches(2), max_batches=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, -0.1, math.inf])
def test_tau_must_be_finite_and_non_negative(bad: float) -> None:
    model = DeadMLP()
    with pytest.raises(ValueError, match="tau"):
        scan(model, model.make_batches(1), tau=bad)


# ------------------------------------------------------------------ Report.from_json


def _report_file(tmp_path: Path) -> tuple[Path, dict]:
    model = DeadMLP()
    path = tmp_path / "scan.json"
    scan(model, model.make_batches(1)).to_json(path)
    return path, json.loads(path.read_text())


def test_from_json_truncated_file_names_the_file(tmp_path: Path) -> None:
    path, _ = _report_file(tmp_path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"scan\.json: not valid JSON.*truncated"):
        Report.from_json(path)
    with pytest.raises(ValueError, match=r"scan\.json"):
        Report.from_json(str(path))


def test_from_json_list_and_corrupt_fields(tmp_path: Path) -> None:
    path, data = _report_file(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(
        ValueError, match=r"scan\.json: a deadrelu report is a JSON object, got a list"
    ):
        Report.from_json(path)
    broken = dict(data, sites=[dict(data["sites"][0], stats="garbage")])
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"scan\.json: field sites\[0\] \('relu1'\)\.stats"):
        Report.from_json(path)
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "sites"}))
    with pytest.raises(ValueError, match=r"scan\.json: field sites is missing"):
        Report.from_json(path)
    stats = dict(data["sites"][0]["stats"])
    del stats["active"]
    path.write_text(json.dumps(dict(data, sites=[dict(data["sites"][0], stats=stats)])))
    with pytest.raises(ValueError, match=r"field sites\[0\] \('relu1'\)\.stats is malformed"):
        Report.from_json(path)
    with pytest.raises(ValueError, match="the JSON text: not valid JSON"):
        Report.from_json('{"schema": ')


# ------------------------------------------------------------------ NaN / inf


class _Net(nn.Sequential):
    """Linear(4, 6) -> ReLU; unit 2's weights are NaN, unit 3's +inf (inputs > 0), unit 5
    is dead by a -1000 bias; the others are alive (bias +10)."""

    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 6), nn.ReLU())
        with torch.no_grad():
            self[0].weight.uniform_(-0.1, 0.1)
            self[0].bias.fill_(10.0)
            self[0].weight[2] = math.nan
            self[0].weight[3] = math.inf
            self[0].bias[5] = -1000.0


@pytest.mark.parametrize("detail", ["counts", "range", "full"])
def test_nonfinite_units_are_counted_and_said_at_every_level(detail: str) -> None:
    x = torch.rand(16, 4) + 0.1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = scan(_Net(), x, detail=detail)
    assert report.nonfinite_units("1") == [2, 3]
    assert report.dead_units("1") == [2, 5]  # NaN > 0 is false: dead by the definition ...
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1  # ... and said so
    assert "2 units saw NaN/inf" in msgs[0] and "'1' (2)" in msgs[0]
    assert "1 of them are also counted dead" in msgs[0]
    assert "2 saw NaN/inf (1 of them counted dead)" in str(report)
    assert "nonfinite=2" in repr(report)
    assert report.summary()["nonfinite"] == 2
