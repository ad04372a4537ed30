"""The Monitor under DDP: 2 CPU processes (gloo, ``torch.multiprocessing`` spawn, ``file://``).

Ground truth by construction (:class:`models.FirstLayerNegativeWeights`): unit 3 of ``act``
has all-negative weights and bias 0, so it is dead on inputs >= 0 and alive on inputs <= 0;
unit 5 gets bias -1000 and is dead everywhere. Rank 0 sees inputs in [0, 1], rank 1 inputs
in [-1, 0]. Globally only unit 5 is dead; rank 0 alone would also call unit 3 dead. Every
rank must report the global answer, and the same totals.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ddp import finish_process_group, spawn
from deadrelu.monitor import Monitor
from models import DEAD_BIAS, FirstLayerNegativeWeights, batches

WORLD = 2
STEPS = 6
BATCH = 16

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = FirstLayerNegativeWeights()
        with torch.no_grad():
            model.fc.bias[5] = DEAD_BIAS
        ddp = DDP(model)
        lo, hi = (0.0, 1.0) if rank == 0 else (-1.0, 0.0)
        xs = batches((BATCH, model.in_features), 4, low=lo, high=hi, seed=rank)
        opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
        mon = Monitor(ddp, every=2, window=4, track_grad=True)
        local = Monitor(model, every=2, window=4, group=False)
        with mon, local:
            for t in range(STEPS):
                ddp(xs[t % len(xs)]).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
                mon.step()
                local.step()
        report = mon.report()
        checks = mon.check_zero_grad()
        result = {
            "dead": mon.all_units(),
            "local_dead": local.all_units(),
            "report_dead": report.dead_units("act"),
            "positions": int(report.stats["act"].positions),
            "active": report.stats["act"].active.tolist(),
            "history": mon.history.as_dict(),
            "last_active": mon.state_dict()["sites"]["act"]["last_active"].tolist(),
            "producer": checks["act"].producer,
            "zero_grad_holds": checks["act"].holds,
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        finish_process_group()


def test_ddp_counts_are_all_reduced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_file = tmp_path / "init"
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    spawn(_worker, (WORLD, str(init_file), str(tmp_path)), WORLD)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))

    assert r0["dead"] == r1["dead"] == {"act": [5]}
    assert r0["report_dead"] == r1["report_dead"] == [5]
    assert r0["local_dead"] == {"act": [3, 5]}  # what rank 0 would say alone
    assert r1["local_dead"] == {"act": [5]}
    # sampled steps 0, 2, 4: 3 x BATCH positions on each of the 2 ranks
    assert r0["positions"] == r1["positions"] == 3 * BATCH * WORLD
    assert r0["active"] == r1["active"]
    assert r0["active"][3] == 3 * BATCH  # only rank 1's inputs, where z_3 > 0 everywhere
    assert r0["active"][0] == 3 * BATCH * WORLD  # an always-active unit
    assert r0["history"] == r1["history"]
    assert r0["last_active"] == r1["last_active"]
    assert r0["producer"] == "fc"
    assert r0["zero_grad_holds"] and r1["zero_grad_holds"]
