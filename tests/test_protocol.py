"""The one result protocol (issue 11, item 8): Report, Monitor, Certificate and Explanation
answer the same questions the same way. Ground truth by construction: DeadMLP's units
relu1 [1, 4] and relu2 [7] have bias -1000 on inputs in [-1, 1]."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from deadrelu import activations
from deadrelu.capture import Site
from deadrelu.certify import Box, Certificate, certify
from deadrelu.explain import Explanation, explain
from deadrelu.monitor import Monitor
from deadrelu.report import Report, Result
from deadrelu.scan import scan
from deadrelu.stats import UnitStats
from models import DeadMLP

EXPECTED = {"relu1": [1, 4], "relu2": [7]}


def _report(model: DeadMLP) -> Report:
    return scan(model, model.make_batches(4))


def _monitor(model: DeadMLP) -> Monitor:
    with Monitor(model, every=1, window=4, training_only=False) as mon:
        for x in model.make_batches(4):
            model(x)
            mon.step()
    return mon


def _certificate(model: DeadMLP) -> Certificate:
    return certify(model, Box.from_bounds((model.in_features,), -1.0, 1.0))


def _explanation(model: DeadMLP) -> Explanation:
    return explain(model, _report(model), model.make_batches(2))


MAKERS: dict[str, Callable[[DeadMLP], Any]] = {
    "Report": _report,
    "Monitor": _monitor,
    "Certificate": _certificate,
    "Explanation": _explanation,
}


def _rebuild(result: Any, model: DeadMLP) -> Any:
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # strict JSON
    if isinstance(result, Monitor):
        return Monitor.from_dict(data, model)
    return type(result).from_dict(data)


@pytest.mark.parametrize("kind", list(MAKERS))
def test_every_result_answers_the_same_way(kind: str) -> None:
    model = DeadMLP()
    result = MAKERS[kind](model)
    assert isinstance(result, Result)
    assert list(result.sites) == ["relu1", "relu2"]
    assert {s: result.dead_units(s) for s in result.sites} == EXPECTED
    assert all(type(i) is int for i in result.dead_units("relu1"))
    with pytest.raises(KeyError, match="relu1"):
        result.dead_units("nope")
    back = _rebuild(result, model)
    assert type(back) is type(result)
    assert list(back.sites) == list(result.sites)
    assert {s: back.dead_units(s) for s in back.sites} == EXPECTED
    text = repr(result)
    assert "\n" not in text and len(text) < 200 and type(result).__name__ in text
    page = result._repr_html_()
    assert page.startswith("<div>") and "<table>" in page and "relu1" in page
    assert "relu2" in page


def test_print_certificate_is_short() -> None:
    cert = _certificate(DeadMLP())
    assert len(str(cert).splitlines()) == 1 and "certified_dead=3/28" in str(cert)


def test_monitor_from_dict_resumes_counting() -> None:
    model = DeadMLP()
    mon = _monitor(model)
    back = Monitor.from_dict(json.loads(json.dumps(mon.to_dict())), model, training_only=False)
    assert back.step_count == mon.step_count == 4 and back.every == 1 and back.window == 4
    assert back.dead_fraction() == mon.dead_fraction()
    with back:
        model(model.make_batches(1)[0])
        back.step()
    assert back.all_units() == EXPECTED and back.history.steps == [0, 1, 2, 3, 4]


def test_html_escapes_names() -> None:
    act = activations.get("relu")
    assert act is not None
    stats = UnitStats.empty(2)
    stats.positions.fill_(4)
    site = Site("blk<b>", act, -1, "module", "blk")
    page = Report({"blk<b>": stats}, {"blk<b>": site})._repr_html_()
    assert "blk&lt;b&gt;" in page and "blk<b>" not in page


def _statically_results(r: Report, m: Monitor, c: Certificate, e: Explanation) -> list[Result]:
    """mypy checks that the four classes satisfy the protocol (``mypy tests/test_protocol.py``)."""
    return [r, m, c, e]
