"""``scan`` inside a torch.distributed job: 2 CPU processes (gloo, spawn, ``file://``).

Each rank scans its shard of the batches (rank r takes batches r, r + 2, ...: what a
``DistributedSampler`` does, here with 5 batches so the shards are uneven). The oracle is
one process scanning all the batches with ``group=False``: the reduced report must equal
it (counts and extrema exactly, sums and moments within 1e-6 relative) on both ranks,
and the two ranks' reports must be identical. The dead units are known by construction
(:mod:`models`). :class:`Branchy` runs ``act_pos`` only on positive inputs (rank 0's) and
``act_neg`` only on negative ones (rank 1's): the ranks must agree on the sites instead of
hanging. All cases run in one spawn of the workers (a fixture), to keep the file short.

The tiny HF causal LM (:func:`models.tiny_opt`, 3 more fc1 units of layer 0 given bias 0
so they are active on some tokens only) reads dict batches of ``input_ids`` and a
right-padded ``attention_mask``: padding is excluded (``mask="auto"``) on both sides.
Besides the one-process oracle, a forward hook written here counts, independently of
deadrelu, the unpadded tokens on which each unit of layer 0 is active.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ddp import finish_process_group, run_ranks
from deadrelu.report import Report
from deadrelu.scan import scan
from deadrelu.zoo import import_torchvision
from models import OPT_DEAD, DeadChannelCNN, DeadMLP, batches, tiny_opt

WORLD = 2
N_BATCHES = 5
HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
OPT_SITE = "model.decoder.layers.0.activation_fn"
OPT_PARTLY = [3, 4, 5]  # layer 0's fc1 units with bias 0 (active on some tokens)

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


class Branchy(nn.Module):
    """``act`` always; then ``act_pos`` (5 units) when the batch mean is > 0, else
    ``act_neg`` (3 units). Weights in [-0.1, 0.1] and bias 1 keep every z > 0 on inputs
    in [-1, 1], except the units with bias -1000: ``act`` 0, ``act_pos`` 2, ``act_neg`` 1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc, self.act = nn.Linear(4, 6), nn.ReLU()
        self.pos, self.act_pos = nn.Linear(6, 5), nn.ReLU()
        self.neg, self.act_neg = nn.Linear(6, 3), nn.ReLU()
        with torch.no_grad():
            for layer, dead in ((self.fc, 0), (self.pos, 2), (self.neg, 1)):
                layer.weight.uniform_(-0.1, 0.1)
                layer.bias.fill_(1.0)
                layer.bias[dead] = -1000.0

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.fc(x))
        if x.mean() > 0:
            return self.act_pos(self.pos(h))
        return self.act_neg(self.neg(h))


def _cases() -> dict[str, tuple[nn.Module, list[Tensor]]]:
    """Model and all batches of each case, the same in every process."""
    torch.manual_seed(0)
    mlp = DeadMLP()
    cnn = DeadChannelCNN()
    # 3 positive batches, then 2 negative ones: _shard gives rank 0 the positive ones
    signed = batches((8, 4), 3, low=0.0, high=1.0, seed=5) + batches(
        (8, 4), 2, low=-1.0, high=0.0, seed=6
    )
    return {
        "mlp": (mlp, batches((16, mlp.in_features), N_BATCHES, seed=1)),
        "cnn": (cnn, cnn.make_batches(N_BATCHES, batch=8, seed=2)),
        "branchy": (Branchy(), signed),
    }


def _opt_case() -> tuple[nn.Module, list[dict[str, Tensor]]]:
    """The tiny OPT and 5 batches of 4 sequences of 8 token ids, right-padded to 3..8
    tokens (``attention_mask`` 0 after each sequence's length)."""
    import_torchvision()  # before transformers (see deadrelu.zoo)
    import transformers

    model = tiny_opt(transformers)
    with torch.no_grad():
        model.model.decoder.layers[0].fc1.bias[OPT_PARTLY] = 0.0
    g = torch.Generator().manual_seed(4)
    out = []
    for _ in range(N_BATCHES):
        ids = torch.randint(0, 64, (4, 8), generator=g)
        lengths = torch.randint(3, 9, (4,), generator=g)
        mask = (torch.arange(8)[None, :] < lengths[:, None]).long()
        out.append({"input_ids": ids, "attention_mask": mask})
    return model, out


def _shard(case: str, xs: list[Any], rank: int) -> list[Any]:
    if case == "branchy":  # rank 0: the positive batches, rank 1: the negative ones
        return xs[:3] if rank == 0 else xs[3:]
    return xs[rank::WORLD]


def _dump(report: Report) -> dict[str, Any]:
    return {
        "order": list(report.stats),
        "stats": {name: s.state_dict() for name, s in report.stats.items()},
        "activations": {name: str(site.activation) for name, site in report.sites.items()},
        "dead": {name: report.dead_units(name) for name in report.stats},
        "batches": report.meta["batches"],
        "ranks": report.meta.get("ranks"),
        "tokens": report.meta.get("tokens"),
    }


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out: dict[str, Any] = {}
        for case, (model, xs) in _cases().items():
            out[case] = _dump(scan(model, _shard(case, xs, rank), detail="full"))
        if HAVE_TRANSFORMERS:
            opt, token_batches = _opt_case()
            out["opt"] = _dump(scan(opt, _shard("opt", token_batches, rank), detail="full"))
        model, xs = _cases()["mlp"]
        out["local"] = _dump(scan(model, _shard("mlp", xs, rank), detail="full", group=False))
        # a rank with no batch at all contributes nothing instead of raising
        out["one_empty"] = _dump(scan(model, xs[:2] if rank == 0 else [], detail="full"))
        # different models on the ranks: the same error on every rank, no hang
        torch.manual_seed(0)
        odd = nn.Sequential(nn.Linear(4, 3 + rank), nn.ReLU())
        try:
            scan(odd, batches((2, 4), 1))
        except ValueError as exc:
            out["mismatch"] = str(exc)
        torch.save(out, Path(out_dir, f"rank{rank}.pt"))
    finally:
        finish_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of the 2 ranks returned, by case."""
    return run_ranks(_worker, tmp_path_factory.mktemp("dscan"), WORLD)


def _oracle(case: str, xs: list[Tensor] | None = None) -> dict[str, Any]:
    model, all_xs = _cases()[case]
    return _dump(scan(model, all_xs if xs is None else xs, detail="full", group=False))


EXACT = ("positions", "active", "nonfinite", "z_max", "z_min")
CLOSE = ("abs_sum", "z_sum", "z_m2")


def _assert_same_stats(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got["stats"]) == sorted(want["stats"])
    for name, mine in got["stats"].items():
        theirs = want["stats"][name]
        for field in EXACT:
            assert torch.equal(mine[field], theirs[field]), (name, field)
        for field in CLOSE:
            torch.testing.assert_close(
                mine[field], theirs[field], rtol=1e-6, atol=1e-9, msg=f"{name}.{field}"
            )


@pytest.mark.parametrize("case", ["mlp", "cnn", "branchy"])
def test_two_ranks_equal_one_process_on_all_data(ranks: list[dict[str, Any]], case: str) -> None:
    want = _oracle(case)
    r0, r1 = ranks[0][case], ranks[1][case]
    for got in (r0, r1):
        _assert_same_stats(got, want)
        assert got["dead"] == want["dead"]
        assert got["batches"] == N_BATCHES
    # the same report on every rank: bit for bit, sites in the same order
    assert r0["order"] == r1["order"]
    for name in r0["stats"]:
        for field, t in r0["stats"][name].items():
            assert torch.equal(t, r1["stats"][name][field]), (name, field)


def test_dead_units_are_the_constructed_ones(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["mlp"]["dead"] == DeadMLP().expected_dead
    assert ranks[1]["cnn"]["dead"] == DeadChannelCNN().expected_dead
    assert ranks[1]["branchy"]["dead"] == {"act": [0], "act_pos": [2], "act_neg": [1]}


def test_site_run_by_one_rank_only(ranks: list[dict[str, Any]]) -> None:
    for rank in range(WORLD):
        got = ranks[rank]["branchy"]
        assert got["ranks"] == {
            "world_size": WORLD,
            "batches": [3, 2],
            "sites": {"act": [0, 1], "act_pos": [0], "act_neg": [1]},
        }
        # rank 0 never ran act_neg: its statistics are rank 1's alone, its site rebuilt
        assert got["activations"]["act_neg"] == "relu"
        assert int(got["stats"]["act_neg"]["positions"]) == 2 * 8
        assert int(got["stats"]["act_pos"]["positions"]) == 3 * 8
    _assert_same_stats(ranks[0]["branchy"], _oracle("branchy"))


def test_group_false_keeps_each_rank_local(ranks: list[dict[str, Any]]) -> None:
    xs = _cases()["mlp"][1]
    for rank in range(WORLD):
        got = ranks[rank]["local"]
        assert got["ranks"] is None
        _assert_same_stats(got, _oracle("mlp", _shard("mlp", xs, rank)))


def test_a_rank_without_batches(ranks: list[dict[str, Any]]) -> None:
    want = _oracle("mlp", _cases()["mlp"][1][:2])
    for rank in range(WORLD):
        got = ranks[rank]["one_empty"]
        _assert_same_stats(got, want)
        assert got["ranks"]["batches"] == [2, 0]
        assert got["ranks"]["sites"] == {"relu1": [0], "relu2": [0]}


def test_ranks_with_different_models_raise_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for rank in range(WORLD):
        message = ranks[rank]["mismatch"]
        assert "site '1'" in message and "(3, -1, 'range')" in message
        assert "(4, -1, 'range')" in message and "group=False" in message


@pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="needs transformers")
def test_hf_causal_lm_two_ranks_equal_one_process(ranks: list[dict[str, Any]]) -> None:
    model, token_batches = _opt_case()
    # independent oracle for layer 0: a hook counting unpadded tokens where a unit is active
    active = torch.zeros(32, dtype=torch.int64)

    def count(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal active
        keep = batch["attention_mask"].reshape(-1).bool()  # OPT's FFN runs on (B * T, U)
        active += (out.reshape(keep.numel(), -1)[keep] > 0).sum(0)

    handle = model.model.decoder.layers[0].activation_fn.register_forward_hook(count)
    with torch.no_grad():
        for batch in token_batches:
            model(**batch)
    handle.remove()
    tokens = sum(int(b["attention_mask"].sum()) for b in token_batches)
    assert tokens < N_BATCHES * 4 * 8  # some padding to exclude
    assert int(active[OPT_PARTLY].min()) > 0 and int(active[OPT_PARTLY].max()) < tokens

    want = _dump(scan(model, token_batches, detail="full", group=False))
    r0, r1 = ranks[0]["opt"], ranks[1]["opt"]
    for got in (r0, r1):
        _assert_same_stats(got, want)
        assert got["dead"] == want["dead"]
        assert got["batches"] == N_BATCHES
        assert got["tokens"] == tokens
        assert torch.equal(got["stats"][OPT_SITE]["active"], active)
        assert int(got["stats"][OPT_SITE]["positions"]) == tokens
        for site, dead in OPT_DEAD.items():
            assert got["dead"][site] == dead
    assert r0["order"] == r1["order"]
    for name in r0["stats"]:
        for field, t in r0["stats"][name].items():
            assert torch.equal(t, r1["stats"][name][field]), (name, field)
