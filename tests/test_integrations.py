"""The Lightning, Hugging Face Trainer and TensorBoard integrations, on the real frameworks.

Every model has units dead by construction (bias -1000; the others bounded alive, or bias
+10), so the right sites and fractions are known without running anything: DeadMLP has
relu1 2/16 and relu2 1/12 dead; the tiny OPT has fc1 units dead as set in OPT_DEAD.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import deadrelu as dr
from deadrelu.integrations import metrics
from models import OPT_DEAD, DeadMLP, tiny_opt

EXPECTED = {"net.relu1": 2 / 16, "net.relu2": 1 / 12}


def _loader() -> DataLoader[Any]:
    """5 batches per epoch, all the same 16 samples: Lightning resumed from an epoch-end
    checkpoint replays the data from another batch index (it runs one more batch of the
    finished epoch first), so only identical batches make resumed training identical."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(16, 8, generator=g) * 2 - 1).repeat(5, 1)
    y = torch.randint(0, 3, (16,), generator=g).repeat(5)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


# ---------------------------------------------------------------------- TensorBoard


def test_log_to_tensorboard_read_back_with_event_accumulator(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from deadrelu.integrations.tensorboard import log_to

    model = DeadMLP()
    writer = SummaryWriter(str(tmp_path))
    with dr.Monitor(model, every=1, window=4) as mon:
        for i, x in enumerate(model.make_batches(n=3)):
            model(x)
            mon.step()
            if i:
                mon.log_to(writer, 10 * i)  # the Monitor's thin method
            else:
                log_to(mon, writer, step=0)
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    for site, frac in {"relu1": 2 / 16, "relu2": 1 / 12}.items():
        events = acc.Scalars(f"deadrelu/dead_fraction/{site}")
        assert [e.step for e in events] == [0, 10, 20]
        assert all(math.isclose(e.value, frac, rel_tol=1e-6) for e in events)
        assert f"deadrelu/dormant_fraction/{site}" in scalars
    total = acc.Scalars("deadrelu/dead_fraction")[-1].value
    assert math.isclose(total, 3 / 28, rel_tol=1e-6)
    hist = acc.Histograms("deadrelu/active_fraction/relu1")[-1].histogram_value
    # 16 units: the 2 dead ones at 0, the bounded-alive ones active everywhere (1)
    assert (hist.num, hist.min, hist.max, hist.sum) == (16, 0.0, 1.0, 14.0)


# ---------------------------------------------------------------------- Lightning


def _lit() -> Any:
    from deadrelu.zoo import import_torchvision

    import_torchvision()  # before Lightning, which imports torchvision
    L = pytest.importorskip("lightning")

    class LitMLP(L.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = DeadMLP()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    return L, LitMLP


def _trainer(L: Any, max_steps: int, callbacks: list[Any], logger: Any = False) -> Any:
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        log_every_n_steps=1,
        enable_checkpointing=any(type(c).__name__ == "ModelCheckpoint" for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_lightning_logs_the_dead_sites_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    L, LitMLP = _lit()
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from deadrelu.integrations.lightning import DeadUnitMonitor

    cb = DeadUnitMonitor(every=5, window=10, report_path=tmp_path / "final.json")
    logger = CSVLogger(str(tmp_path), name="csv", version=0)
    ckpts = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    _trainer(L, 30, [cb, ckpts], logger).fit(LitMLP(), _loader())
    text = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    logged = [r for r in rows if r.get("deadrelu/dead_fraction/net.relu1")]
    # counted on steps 0, 5, ..., 25; Lightning repeats a hook's last value on later steps
    assert [int(r["step"]) for r in logged] == list(range(30))
    for site, frac in EXPECTED.items():
        values = [float(r[f"deadrelu/dead_fraction/{site}"]) for r in logged]
        assert all(math.isclose(v, frac, rel_tol=1e-6) for v in values)
    assert cb.report is not None and cb.report.all_units("dead") == {
        "net.relu1": [1, 4],
        "net.relu2": [7],
    }
    assert (tmp_path / "final.json").is_file()
    whole = cb.monitor.state_dict()  # type: ignore[union-attr]

    # resume from the checkpoint written at the end of the third epoch (step 15)
    resumed_cb = DeadUnitMonitor(every=5, window=10)
    ckpt = tmp_path / "ckpt" / "epoch=2-step=15.ckpt"
    _trainer(L, 30, [resumed_cb]).fit(LitMLP(), _loader(), ckpt_path=str(ckpt))
    resumed = resumed_cb.monitor.state_dict()  # type: ignore[union-attr]
    assert resumed["step"] == whole["step"] == 30
    _assert_same(resumed, whole)


def _assert_same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"


def test_lightning_recycle_every_and_unit_histograms(tmp_path: Path) -> None:
    L, LitMLP = _lit()
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from deadrelu.integrations.lightning import DeadUnitMonitor

    module = LitMLP()
    cb = DeadUnitMonitor(every=1, window=2, recycle_every=4, log_units=True)
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    _trainer(L, 4, [cb], logger).fit(module, _loader())
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"histograms": 0})
    acc.Reload()
    hists = acc.Histograms("deadrelu/active_fraction/net.relu1")
    assert [h.step for h in hists] == [0, 1, 2, 3]  # every counted step, before the ReDo
    assert (hists[0].histogram_value.num, hists[0].histogram_value.min) == (16, 0.0)
    dead = acc.Scalars("deadrelu/dead_fraction/net.relu2")  # from pl_module.log
    assert [e.step for e in dead] == [0, 1, 2, 3]
    assert all(math.isclose(e.value, 1 / 12, rel_tol=1e-6) for e in dead)
    # the 3 dead units are recycled: fresh incoming weights, bias 0, outgoing weights 0
    assert cb.recycled == [(4, 3)]
    net = module.net
    assert torch.equal(net.fc1.bias.detach()[[1, 4]], torch.zeros(2))
    others = [i for i in range(12) if i != 7]  # row 7 (relu2's dead unit) is re-drawn
    assert torch.equal(net.fc2.weight.detach()[others][:, [1, 4]], torch.zeros(11, 2))
    assert float(net.fc2.bias.detach()[7]) == 0.0
    assert torch.equal(net.head.weight.detach()[:, 7], torch.zeros(3))
    assert float(net.fc1.weight.detach()[[1, 4]].abs().sum()) > 0  # re-drawn, not zeroed


# ---------------------------------------------------------------------- Hugging Face


def test_hf_trainer_logs_the_dead_sites_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    from deadrelu.zoo import import_torchvision

    import_torchvision()
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from deadrelu.integrations.hf import STATE_FILE, DeadUnitCallback

    row = torch.randint(0, 64, (8,), generator=torch.Generator().manual_seed(0))
    dataset = [{"input_ids": row, "labels": row}] * 32  # same rows: any order, same training
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1000,
        save_strategy="steps",
        save_steps=4,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )

    def run(resume: str | None) -> Any:
        trainer = transformers.Trainer(
            model=tiny_opt(transformers), args=args, train_dataset=dataset
        )
        cb = DeadUnitCallback(trainer, every=2, window=4, report_path=tmp_path / "r.html")
        trainer.add_callback(cb)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, cb

    trainer, cb = run(None)
    logs = [h for h in trainer.state.log_history if any(k.startswith("deadrelu/") for k in h)]
    assert [h["step"] for h in logs] == [1, 3, 5, 7]  # counted steps 0, 2, 4, 6 end there
    for h in logs:
        for site, units in OPT_DEAD.items():
            assert math.isclose(h[f"deadrelu/dead_fraction/{site}"], len(units) / 32)
    assert cb.report is not None
    assert {k: v for k, v in cb.report.all_units("dead").items() if v} == OPT_DEAD
    assert "model.decoder.layers.0.activation_fn" in (tmp_path / "r.html").read_text()
    whole = cb.monitor.state_dict()  # type: ignore[union-attr]

    half = tmp_path / "out" / "checkpoint-4"
    assert (half / STATE_FILE).is_file()
    _, resumed_cb = run(str(half))
    resumed = resumed_cb.monitor.state_dict()  # type: ignore[union-attr]
    assert resumed["step"] == whole["step"] == 8
    _assert_same(resumed, whole)


def test_metrics_names_and_totals_from_a_report() -> None:
    model = DeadMLP()
    values = metrics(dr.scan(model, model.make_batches()), prefix="x", dormant=False)
    assert values == {
        "x/dead_fraction/relu1": 2 / 16,
        "x/dead_fraction/relu2": 1 / 12,
        "x/dead_fraction": 3 / 28,
    }


def test_hf_recycle_every_resets_the_dead_units(tmp_path: Path) -> None:
    from deadrelu.zoo import import_torchvision

    import_torchvision()
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from deadrelu.integrations.hf import DeadUnitCallback

    model = tiny_opt(transformers)
    row = torch.randint(0, 64, (8,), generator=torch.Generator().manual_seed(0))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=[{"input_ids": row, "labels": row}] * 8
    )
    trainer.add_callback(DeadUnitCallback(trainer, every=1, window=2, recycle_every=2))
    trainer.train()
    for i, layer in enumerate(model.model.decoder.layers):
        units = OPT_DEAD[f"model.decoder.layers.{i}.activation_fn"]
        assert torch.equal(layer.fc1.bias.detach()[units], torch.zeros(len(units)))  # was -1000
        assert torch.equal(layer.fc2.weight.detach()[:, units], torch.zeros(16, len(units)))
