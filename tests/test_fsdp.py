"""The Monitor, ``scan`` and ``recycle`` under FSDP2 (``fully_shard``): 2 CPU processes
(gloo, spawn).

FSDP2 runs on CPU with gloo on this torch (2.13), so this is the real thing, not a stand-in.
The model is :class:`models.FirstLayerNegativeWeights` inside a container (sites get a
prefix: ``block.act``), with ``fully_shard`` applied to ``block.fc``, to the activation
module ``block.act`` itself, to ``block`` and to the root: every class on the way to the
site is swapped for an ``FSDP<Class>``. Ground truth by construction, as in
``test_distributed.py``: unit 5 has bias -1000 (dead everywhere), unit 3 has all-negative
weights and bias 0 (dead on rank 0's inputs in [0, 1], alive on rank 1's in [-1, 0]).

Oracles, in this process: a one-process Monitor on the plain model that, at every step,
loads the weights the FSDP ranks had (gathered at each step) and runs both ranks' batches;
its statistics must equal the FSDP Monitor's (counts exactly, moments within 1e-6
relative). A scan of the sharded model must equal a one-process scan of the plain model
with the same weights over both ranks' batches. ``recycle`` on the sharded model must give
the full parameters and optimizer state that a one-process ``recycle`` with the same
generator gives on the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ddp import finish_process_group, run_ranks
from deadrelu.graph import fsdp_modules, plain_class, trace
from deadrelu.monitor import Monitor
from deadrelu.remedies import recycle
from deadrelu.scan import scan
from models import DEAD_BIAS, FirstLayerNegativeWeights, batches

WORLD = 2
STEPS = 6
EVERY = 2
WINDOW = 4
BATCH = 16
SEED = 7  # recycle's generator

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


class Net(nn.Module):
    """:class:`FirstLayerNegativeWeights` one level down, unit 5 killed (bias -1000)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = FirstLayerNegativeWeights()
        with torch.no_grad():
            self.block.fc.bias[5] = DEAD_BIAS

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


def _xs(rank: int) -> list[Tensor]:
    """Rank 0's inputs are in [0, 1], rank 1's in [-1, 0]; one batch per step."""
    lo, hi = (0.0, 1.0) if rank == 0 else (-1.0, 0.0)
    return batches((BATCH, 6), STEPS, low=lo, high=hi, seed=rank)


def _full(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Plain full copies (a DTensor's ``full_tensor()``: collective)."""
    from torch.distributed.tensor import DTensor

    return {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
        for k, v in tensors.items()
    }


def _buffers(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    return _full({n: opt.state[p]["momentum_buffer"] for n, p in model.named_parameters()})


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out: dict[str, Any] = {}
        model = Net()
        for part in (model.block.fc, model.block.act, model.block, model):
            fully_shard(part)
        out["modules"] = [
            (n, type(m).__name__, plain_class(m).__name__) for n, m in model.named_modules()
        ]
        out["fsdp"] = fsdp_modules(model)
        out["leaves"] = [n.target for n in trace(model).graph.nodes if n.op == "call_module"]
        try:
            Monitor(model, track_grad=True)
        except ValueError as exc:
            out["track_grad"] = str(exc)
        xs = _xs(rank)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        mon = Monitor(model, every=EVERY, window=WINDOW, detail="full")
        local = Monitor(model, every=EVERY, window=WINDOW, group=False)
        weights = []
        with mon, local:
            for t in range(STEPS):
                weights.append(_full(model.state_dict()))
                model(xs[t]).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
                mon.step()
                local.step()
        out["weights"] = weights
        out["sites"] = mon.sites
        out["dead"] = mon.all_units()
        out["local_dead"] = local.all_units()
        out["stats"] = {n: s.state_dict() for n, s in mon.report().stats.items()}
        out["history"] = mon.history.as_dict()

        out["before"], out["buffers_before"] = _full(model.state_dict()), _buffers(model, opt)
        # a scan of the sharded model (every rank the same number of batches: the forward
        # is collective under FSDP), all-reduced across the ranks
        out["scan"] = {n: s.state_dict() for n, s in scan(model, xs, detail="full").stats.items()}
        gen = torch.Generator().manual_seed(SEED + rank)  # ranks draw differently: rank 0 wins
        summary = recycle(model, mon, opt, example_inputs=xs[0], generator=gen)
        out["recycled"], out["change"] = summary.units, summary.max_output_change
        out["after"], out["buffers_after"] = _full(model.state_dict()), _buffers(model, opt)
        torch.save(out, Path(out_dir, f"rank{rank}.pt"))
    finally:
        finish_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of the 2 FSDP ranks recorded."""
    return run_ranks(_worker, tmp_path_factory.mktemp("fsdp"), WORLD)


def _oracle(weights: list[dict[str, Tensor]]) -> Monitor:
    """One process, the plain model, both ranks' batches at every step with the weights
    the ranks had at that step."""
    model = Net()
    mon = Monitor(model, every=EVERY, window=WINDOW, detail="full", group=False)
    data = [_xs(r) for r in range(WORLD)]
    with mon:
        for t in range(STEPS):
            model.load_state_dict(weights[t])
            for xs in data:
                model(xs[t])
            mon.step()
    return mon


def _assert_same(mine: dict[str, Tensor], theirs: dict[str, Tensor]) -> None:
    """Counts and extrema exactly, sums and moments within 1e-6 relative."""
    assert sorted(mine) == sorted(theirs)
    for field, value in mine.items():
        if value.is_floating_point() and field not in ("z_max", "z_min"):
            torch.testing.assert_close(value, theirs[field], rtol=1e-6, atol=1e-9, msg=field)
        else:
            assert torch.equal(value, theirs[field]), field


def test_names_are_the_plain_models(ranks: list[dict[str, Any]]) -> None:
    plain = [n for n, _ in Net().named_modules()]
    for got in ranks:
        assert [n for n, _, _ in got["modules"]] == plain
        classes = {n: (cls, orig) for n, cls, orig in got["modules"]}
        assert classes["block.act"] == ("FSDPReLU", "ReLU")  # fully_shard swapped it
        assert classes["block.fc"] == ("FSDPLinear", "Linear")
        assert classes["block.head"] == ("Linear", "Linear")  # not sharded on its own
        assert classes[""] == ("FSDPNet", "Net")
        assert got["fsdp"] == ["", "block", "block.fc", "block.act"]
        # torch.fx keeps the swapped torch layers as leaves, as in the plain model
        assert got["leaves"] == ["block.fc", "block.act", "block.head"]
        assert got["sites"] == ["block.act"]


def test_counts_all_reduced_equal_one_process_on_all_data(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks
    for t in range(STEPS):  # the ranks ran the same weights
        for k, v in r0["weights"][t].items():
            assert torch.equal(v, r1["weights"][t][k]), (t, k)
    want = _oracle(r0["weights"])
    want_stats = {n: s.state_dict() for n, s in want.report().stats.items()}
    for got in ranks:
        assert got["dead"] == want.all_units() == {"block.act": [5]}
        assert got["history"] == want.history.as_dict()
        assert sorted(got["stats"]) == sorted(want_stats) == ["block.act"]
        _assert_same(got["stats"]["block.act"], want_stats["block.act"])
    # by construction: 3 sampled steps x BATCH positions per rank; unit 3 active on rank
    # 1's inputs only, unit 5 never
    stats = r0["stats"]["block.act"]
    assert int(stats["positions"]) == 3 * BATCH * WORLD
    assert stats["active"][3] == 3 * BATCH and stats["active"][5] == 0
    assert r0["local_dead"] == {"block.act": [3, 5]}  # what rank 0 alone would say
    assert r1["local_dead"] == {"block.act": [5]}


def test_scan_of_the_sharded_model_equals_one_process(ranks: list[dict[str, Any]]) -> None:
    model = Net()
    model.load_state_dict(ranks[0]["before"])
    want = scan(model, _xs(0) + _xs(1), detail="full", group=False).stats["block.act"]
    for got in ranks:
        assert list(got["scan"]) == ["block.act"]
        _assert_same(got["scan"]["block.act"], want.state_dict())
    assert int(want.positions) == 2 * STEPS * BATCH and want.active[5] == 0


def test_recycle_edits_the_sharded_parameters(ranks: list[dict[str, Any]]) -> None:
    r0, r1 = ranks
    for got in ranks:
        assert got["recycled"] == {"block.act": [5]}
        assert got["change"] == 0.0  # unit 5 was dead: outputs unchanged
    # every rank holds the same full parameters and optimizer state (rank 0's draw)
    for key in ("after", "buffers_after"):
        for k, v in r0[key].items():
            assert torch.equal(v, r1[key][k]), (key, k)
    before, after = r0["before"], r0["after"]
    others = [u for u in range(10) if u != 5]
    assert not torch.equal(after["block.fc.weight"][5], before["block.fc.weight"][5])
    assert torch.equal(after["block.fc.weight"][others], before["block.fc.weight"][others])
    assert after["block.fc.bias"][5] == 0.0
    assert torch.equal(after["block.fc.bias"][others], before["block.fc.bias"][others])
    assert torch.equal(after["block.head.weight"][:, 5], torch.zeros(2))
    head, head_before = after["block.head.weight"], before["block.head.weight"]
    assert torch.equal(head[:, others], head_before[:, others])
    buf = r0["buffers_after"]
    assert torch.equal(buf["block.fc.weight"][5], torch.zeros(6))
    assert torch.equal(buf["block.head.weight"][:, 5], torch.zeros(2))

    # oracle: one process, the same weights and momentum, the same generator as rank 0
    model = Net()
    model.load_state_dict(before)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for name, p in model.named_parameters():
        opt.state[p]["momentum_buffer"] = r0["buffers_before"][name].clone()
    gen = torch.Generator().manual_seed(SEED)
    recycle(model, {"block.act": [5]}, opt, example_inputs=_xs(0)[0], generator=gen)
    for k, v in model.state_dict().items():
        assert torch.equal(after[k], v), k
    for name, p in model.named_parameters():
        assert torch.equal(buf[name], opt.state[p]["momentum_buffer"]), name


def test_track_grad_is_refused_under_fsdp(ranks: list[dict[str, Any]]) -> None:
    for got in ranks:
        message = got["track_grad"]
        assert "FSDP2" in message and "track_grad=False" in message
        assert "['', 'block', 'block.fc']" in message
