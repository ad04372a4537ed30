"""Site names and statistics under wrappers that insert a module level: activation
checkpointing (``checkpoint_wrapper`` / ``apply_activation_checkpointing``, one process) and
FSDP1 (``FullyShardedDataParallel``, 2 gloo processes on CPU).

Ground truth by construction: the layers are :func:`models.bounded_linear` s (|w . x| <= 1
on their inputs' range, alive biases 1.5), so every unit is active on every position except
unit 2 of ``blocks.0.act`` (bias -1000 in ``blocks.0.up``) and unit 4 of the functional
``blocks.1:relu`` (bias -1000 in ``blocks.1.mid``), which never are. The oracle for names
and statistics is the plain model with the same weights: the wrapped model must give the
same site names (no ``_checkpoint_wrapped_module.`` / ``_fsdp_wrapped_module.``) and the
same counts exactly.
Under activation checkpointing the backward pass runs the blocks' forwards again; a
Monitor must still count each position once (positions = steps x batch, by construction).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)

from ddp import finish_process_group, run_ranks
from deadrelu.graph import plain_name, submodule
from deadrelu.monitor import Monitor
from deadrelu.remedies import recycle
from deadrelu.scan import scan
from models import DEAD_BIAS, batches, bounded_linear

D, H, BATCH, STEPS = 6, 8, 16, 4
BOUND = 3.0  # inputs after the first layer: |x| <= |w . x| + alive bias = 1 + 1.5 < BOUND
KILLED = {"blocks.0.act": [2], "blocks.1:relu": [4]}
SITES = ["blocks.0.act", "blocks.0:relu", "blocks.1.act", "blocks.1:relu"]


class Block(nn.Module):
    """``x + down(relu(mid(act(up(x)))))``: a module site (``act``, read by ``mid`` inside
    the block, so a recomputing backward calls it again) and a functional one (``:relu``)."""

    def __init__(self, seed: int, bound: float) -> None:
        super().__init__()
        self.up = bounded_linear(D, H, input_bound=bound, seed=seed)
        self.act = nn.ReLU()
        self.mid = bounded_linear(H, H, input_bound=BOUND, seed=seed + 1)
        self.down = bounded_linear(H, D, input_bound=BOUND, seed=seed + 2)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(F.relu(self.mid(self.act(self.up(x)))))


class Net(nn.Module):
    """Two :class:`Block` s and a head; the killed units of :data:`KILLED`."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(Block(0, 1.0), Block(3, BOUND + 1.0))
        self.head = nn.Linear(D, 2)
        with torch.no_grad():
            self.blocks[0].up.bias[2] = DEAD_BIAS
            self.blocks[1].mid.bias[4] = DEAD_BIAS

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x))


def _data(seed: int = 0, low: float = -1.0, high: float = 1.0) -> list[Tensor]:
    return batches((BATCH, D), STEPS, low=low, high=high, seed=seed)


def _checkpointed(model: nn.Module, impl: CheckpointImpl, nested: bool = False) -> nn.Module:
    """``model`` with every Block checkpointed (and, ``nested``, ``blocks.1.up`` too)."""
    wrapper = functools.partial(checkpoint_wrapper, checkpoint_impl=impl)

    def pick(m: nn.Module) -> bool:
        return isinstance(m, Block) or (nested and m is model.blocks[1].up)

    apply_activation_checkpointing(model, checkpoint_wrapper_fn=wrapper, check_fn=pick)
    return model


IMPLS = [CheckpointImpl.NO_REENTRANT, CheckpointImpl.REENTRANT]


def _assert_same(mine: dict[str, Tensor], theirs: dict[str, Tensor]) -> None:
    """Counts and extrema exactly, sums and moments within 1e-6 relative."""
    assert sorted(mine) == sorted(theirs)
    for field, value in mine.items():
        if value.is_floating_point() and field not in ("z_max", "z_min"):
            torch.testing.assert_close(value, theirs[field], rtol=1e-6, atol=1e-9, msg=field)
        else:
            assert torch.equal(value, theirs[field]), field


# ------------------------------------------------------------------------------------------
# The name mapping
# ------------------------------------------------------------------------------------------


def test_plain_name_drops_wrapper_segments() -> None:
    fsdp = "_fsdp_wrapped_module.blocks.0._fsdp_wrapped_module._checkpoint_wrapped_module.up"
    assert plain_name(fsdp) == "blocks.0.up"
    assert plain_name("blocks.0._checkpoint_wrapped_module") == "blocks.0"
    assert plain_name("_fsdp_wrapped_module") == ""
    assert plain_name("enc._orig_mod.layer:relu#2") == "enc.layer:relu#2"
    assert plain_name("a._b.c:gelu") == "a._b.c:gelu"  # other private names stay
    assert plain_name("blocks.0.act") == "blocks.0.act"


def test_submodule_finds_the_real_layer_by_plain_or_real_name() -> None:
    model = _checkpointed(Net(), CheckpointImpl.NO_REENTRANT, nested=True)
    real = model.get_submodule("blocks.1._checkpoint_wrapped_module.up._checkpoint_wrapped_module")
    assert isinstance(real, nn.Linear)
    assert submodule(model, "blocks.1.up") is real
    assert submodule(model, "blocks.1._checkpoint_wrapped_module.up") is not real  # a wrapper
    assert isinstance(submodule(model, "blocks.1"), Block)  # the wrapped module, not its wrapper
    with pytest.raises(AttributeError, match=r"no module named 'blocks\.7'"):
        submodule(model, "blocks.7")


# ------------------------------------------------------------------------------------------
# Activation checkpointing (one process)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS, ids=["no_reentrant", "reentrant"])
def test_scan_through_checkpointing_equals_plain(impl: CheckpointImpl) -> None:
    plain = Net()
    wrapped = _checkpointed(copy.deepcopy(plain), impl, nested=True)
    assert any("_checkpoint_wrapped_module" in n for n, _ in wrapped.named_modules())
    data = _data()
    want = scan(plain, data, detail="full")
    got = scan(wrapped, data, detail="full")
    assert list(want.stats) == list(got.stats) == SITES
    assert {n: s.module for n, s in got.sites.items()} == {
        n: s.module for n, s in want.sites.items()
    }
    for name in SITES:
        _assert_same(got.stats[name].state_dict(), want.stats[name].state_dict())
    assert {n: got.dead_units(n) for n in SITES} == {n: KILLED.get(n, []) for n in SITES}


def _train(model: nn.Module, mon: Monitor, data: list[Tensor]) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with mon:
        for x in data:
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            mon.step()


@pytest.mark.parametrize("impl", IMPLS, ids=["no_reentrant", "reentrant"])
def test_monitor_through_checkpointing_counts_each_position_once(impl: CheckpointImpl) -> None:
    plain = Net()
    wrapped = _checkpointed(copy.deepcopy(plain), impl, nested=True)
    data = [x.requires_grad_(impl is CheckpointImpl.REENTRANT) for x in _data()]
    want = Monitor(plain, every=1, window=STEPS, detail="full", group=False)
    got = Monitor(wrapped, every=1, window=STEPS, detail="full", group=False)
    _train(plain, want, data)
    _train(wrapped, got, data)
    assert got.sites == want.sites == SITES
    for name, stats in got.report().stats.items():
        assert int(stats.positions) == STEPS * BATCH  # not doubled by the recomputation
        _assert_same(stats.state_dict(), want.report().stats[name].state_dict())
    assert got.all_units() == want.all_units() == {n: KILLED.get(n, []) for n in SITES}
    # a state saved on the plain model's Monitor loads into the wrapped one (same names)
    again = Monitor(wrapped, every=1, window=STEPS, detail="full", group=False)
    again.load_state_dict(want.state_dict())
    assert again.all_units() == want.all_units()


@pytest.mark.parametrize("probe", [False, True], ids=["fx", "probe"])
def test_recycle_through_checkpointing_equals_plain(probe: bool) -> None:
    plain = Net()
    wrapped = _checkpointed(copy.deepcopy(plain), CheckpointImpl.NO_REENTRANT, nested=True)
    data = _data()
    example = data[0] if probe else None
    summaries = []
    for model in (plain, wrapped):
        report = scan(model, data)
        gen = torch.Generator().manual_seed(3)
        summaries.append(recycle(model, report, example_inputs=example, generator=gen))
    want, got = summaries
    assert got.units == want.units == KILLED
    assert got.skipped == want.skipped
    if probe:
        assert got.max_output_change == want.max_output_change == 0.0
    # the state dicts of checkpoint wrappers have the plain keys: compare all parameters
    before = Net().state_dict()
    after = wrapped.state_dict()
    assert sorted(after) == sorted(plain.state_dict())
    for key, value in plain.state_dict().items():
        assert torch.equal(after[key], value), key
    # what changed, by construction: the killed rows (bias 0) and their consumers' columns
    assert not torch.equal(after["blocks.0.up.weight"][2], before["blocks.0.up.weight"][2])
    assert after["blocks.0.up.bias"][2] == 0.0 and after["blocks.1.mid.bias"][4] == 0.0
    assert torch.equal(after["blocks.0.mid.weight"][:, 2], torch.zeros(H))
    assert torch.equal(after["blocks.1.down.weight"][:, 4], torch.zeros(D))
    assert torch.equal(after["blocks.1.up.weight"], before["blocks.1.up.weight"])


def test_unit_dim_keys_are_plain_names_under_checkpointing() -> None:
    wrapped = _checkpointed(Net(), CheckpointImpl.NO_REENTRANT)
    report = scan(wrapped, _data()[:1], unit_dim={"blocks.0.act": 0})
    assert report.stats["blocks.0.act"].units == BATCH  # the override applied to that site
    assert report.stats["blocks.1.act"].units == H


# ------------------------------------------------------------------------------------------
# FSDP1 (2 gloo processes on CPU), with activation checkpointing inside its units
# ------------------------------------------------------------------------------------------

WORLD = 2
EVERY = 2
WINDOW = 4


def _rank_data(rank: int) -> list[Tensor]:
    """Rank 0's inputs in [0, 1], rank 1's in [-1, 0]."""
    return _data(seed=rank, low=0.0 if rank == 0 else -1.0, high=1.0 if rank == 0 else 0.0)


def _fsdp1_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out: dict[str, Any] = {}
        # as Hugging Face accelerate does: FSDP1 units per block, then checkpointing inside
        model = FSDP(
            Net(), auto_wrap_policy=ModuleWrapPolicy({Block}), device_id=torch.device("cpu")
        )
        _checkpointed(model, CheckpointImpl.NO_REENTRANT)
        out["modules"] = [n for n, _ in model.named_modules()]
        try:
            Monitor(model, track_grad=True)
        except ValueError as exc:
            out["track_grad"] = str(exc)
        full = FullStateDictConfig(rank0_only=False, offload_to_cpu=False)
        xs = _rank_data(rank)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        mon = Monitor(model, every=EVERY, window=WINDOW, detail="full")
        weights = []
        with mon:
            for t in range(STEPS):
                with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, full):
                    weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
                model(xs[t]).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
                mon.step()
        out["weights"] = weights
        out["sites"] = mon.sites
        out["dead"] = mon.all_units()
        out["stats"] = {n: s.state_dict() for n, s in mon.report().stats.items()}
        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, full):
            out["before"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out["scan"] = {n: s.state_dict() for n, s in scan(model, xs, detail="full").stats.items()}
        try:
            recycle(model, mon, opt, example_inputs=xs[0])
        except ValueError as exc:
            out["recycle"] = str(exc)
        torch.save(out, Path(out_dir, f"rank{rank}.pt"))
    finally:
        finish_process_group()


@pytest.fixture(scope="module")
def fsdp1_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of the 2 FSDP1 ranks recorded."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed gloo")
    return run_ranks(_fsdp1_worker, tmp_path_factory.mktemp("fsdp1"), WORLD)


def test_fsdp1_names_are_the_plain_models(fsdp1_ranks: list[dict[str, Any]]) -> None:
    plain = [n for n, _ in Net().named_modules()]
    for got in fsdp1_ranks:
        real = got["modules"]
        assert (
            "_fsdp_wrapped_module.blocks.0._fsdp_wrapped_module._checkpoint_wrapped_module.up"
            in real
        )
        assert sorted(set(map(plain_name, real))) == sorted(plain)
        assert got["sites"] == SITES


def test_fsdp1_counts_all_reduced_equal_one_process(fsdp1_ranks: list[dict[str, Any]]) -> None:
    r0, r1 = fsdp1_ranks
    for t in range(STEPS):  # the ranks ran the same (full) weights, with the plain keys
        assert sorted(r0["weights"][t]) == sorted(Net().state_dict())
        for k, v in r0["weights"][t].items():
            assert torch.equal(v, r1["weights"][t][k]), (t, k)
    plain = Net()
    want = Monitor(plain, every=EVERY, window=WINDOW, detail="full", group=False)
    data = [_rank_data(r) for r in range(WORLD)]
    with want:
        for t in range(STEPS):
            plain.load_state_dict(r0["weights"][t])
            for xs in data:
                plain(xs[t])
            want.step()
    want_stats = {n: s.state_dict() for n, s in want.report().stats.items()}
    sampled = len(range(0, STEPS, EVERY))
    for got in fsdp1_ranks:
        assert got["dead"] == want.all_units() == {n: KILLED.get(n, []) for n in SITES}
        assert list(got["stats"]) == SITES
        for name in SITES:
            assert int(got["stats"][name]["positions"]) == sampled * BATCH * WORLD
            _assert_same(got["stats"][name], want_stats[name])
    # the scan of the wrapped, sharded model over both ranks' data
    plain.load_state_dict(r0["before"])
    scanned = scan(plain, data[0] + data[1], detail="full", group=False)
    for got in fsdp1_ranks:
        assert list(got["scan"]) == SITES
        for name in SITES:
            _assert_same(got["scan"][name], scanned.stats[name].state_dict())


def test_fsdp1_recycle_and_track_grad_refuse_with_what_to_do(
    fsdp1_ranks: list[dict[str, Any]],
) -> None:
    for got in fsdp1_ranks:
        for key in ("recycle", "track_grad"):
            message = got[key]
            assert "FSDP1" in message and "['', 'blocks.0', 'blocks.1']" in message, key
        assert "fully_shard" in got["recycle"]
        assert "track_grad=False" in got["track_grad"]


def test_zero_gradient_check_through_checkpointing() -> None:
    model = _checkpointed(Net(), CheckpointImpl.NO_REENTRANT, nested=True)
    mon = Monitor(model, every=1, window=STEPS, track_grad=True, group=False)
    _train(model, mon, _data())
    assert mon.producers == {
        "blocks.0.act": "blocks.0.up",
        "blocks.0:relu": "blocks.0.mid",
        "blocks.1.act": "blocks.1.up",
        "blocks.1:relu": "blocks.1.mid",
    }
    checks = mon.check_zero_grad()
    assert {n: c.dead.tolist() for n, c in checks.items()} == {n: KILLED.get(n, []) for n in SITES}
    assert all(c.holds for c in checks.values())
    # not vacuous: every alive unit's incoming weights got gradient on the last step
    for name, last in mon._grad.grad_last.items():
        alive = torch.ones(last.shape[0], dtype=torch.bool)
        alive[checks[name].dead] = False
        assert bool((last[alive] == STEPS - 1).all()), name
