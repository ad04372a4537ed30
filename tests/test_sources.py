"""deadrelu.sources: model and data specs, checkpoints read without running code."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from deadrelu.scan import scan
from deadrelu.sources import SpecError, load_data, load_model, read_state_dict
from models import DeadMLP


def _dead(report: object) -> dict[str, list[int]]:
    return {k: v for k, v in report.all_units("dead").items() if v}  # type: ignore[attr-defined]


def test_factory_spec_and_weights_with_a_wrapper_prefix(tmp_path: Path) -> None:
    trained = DeadMLP(dead1=(0, 2), dead2=(3,))
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, path)
    loaded = load_model("models:DeadMLP", weights=path)  # default DeadMLP kills other units
    data = load_data("random:8", loaded, batches=2, batch_size=16)
    assert _dead(scan(loaded.model, data)) == {"relu1": [0, 2], "relu2": [3]}


def test_safetensors_checkpoint_with_arch(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / "w.safetensors"
    st.save_file(DeadMLP(dead1=(5,), dead2=(0, 1)).state_dict(), str(path))
    loaded = load_model(str(path), arch="models:DeadMLP")
    assert loaded.source == "checkpoint"
    report = scan(loaded.model, load_data("random:8", loaded, batches=1))
    assert _dead(report) == {"relu1": [5], "relu2": [0, 1]}


def test_weights_that_do_not_fit_name_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"fc1.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(SpecError, match=r"do not fit.*missing"):
        load_model("models:DeadMLP", weights=path)


def test_pickled_model_needs_trust(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(DeadMLP(), path)
    with pytest.raises(SpecError, match="--trust-pickle"):
        read_state_dict(path)
    assert isinstance(read_state_dict(path, trust_pickle=True), DeadMLP)


def test_data_files_pt_dict_npy_and_loader_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_model("models:DeadMLP")
    x = torch.rand(10, 8) * 2 - 1
    torch.save((x, torch.zeros(10)), tmp_path / "xy.pt")
    batches = list(load_data(str(tmp_path / "xy.pt"), loaded, batch_size=4, batches=8))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat(batches), x)
    np.save(tmp_path / "x.npy", x.numpy())
    batches = list(load_data(str(tmp_path / "x.npy"), loaded, batch_size=3, batches=2))
    assert len(batches) == 2 and torch.equal(torch.cat(batches), x[:6])
    torch.save({"input_ids": torch.arange(12).reshape(6, 2)}, tmp_path / "ids.pt")
    batches = list(load_data(str(tmp_path / "ids.pt"), loaded, batch_size=4))
    assert [b["input_ids"].shape for b in batches] == [(4, 2), (2, 2)]

    (tmp_path / "myloaders.py").write_text(
        textwrap.dedent(
            """
            import torch

            def loader():
                return [(torch.ones(2, 8), None) for _ in range(5)]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    batches = list(load_data("myloaders:loader", loaded, batches=3))
    assert len(batches) == 3 and torch.equal(batches[0][0], torch.ones(2, 8))
    sys.modules.pop("myloaders", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the message without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(SpecError, match="CUDA is not available"):
        load_model("models:DeadMLP", device="cuda")


def test_random_data_shape_and_dtype() -> None:
    loaded = load_model("models:DeadMLP", dtype=torch.bfloat16)
    batches = list(load_data("random:8", loaded, batches=2, batch_size=3))
    assert [(b.shape, b.dtype) for b in batches] == [((3, 8), torch.bfloat16)] * 2
    with pytest.raises(SpecError, match="input shape of 'models:DeadMLP' is not known"):
        load_data(None, loaded)


def test_unknown_data_and_model_specs_name_the_forms(tmp_path: Path) -> None:
    loaded = load_model("models:DeadMLP")
    with pytest.raises(SpecError, match="random:CxHxW"):
        load_data(str(tmp_path / "nothing_here"), loaded)
    with pytest.raises(SpecError, match="text, which needs an hf: model"):
        (tmp_path / "t.txt").write_text("words")
        load_data(str(tmp_path / "t.txt"), loaded)
    with pytest.raises(SpecError, match="has no attribute 'nope'"):
        load_model("models:nope")
    with pytest.raises(SpecError, match=r"torchvision has no model 'resnet1'.*resnet18"):
        load_model("torchvision:resnet1")


def test_torchvision_spec_gives_input_shape_and_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    loaded = load_model("torchvision:resnet18")
    assert loaded.input_shape == (3, 224, 224)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / cls / "x.png")
    batches = list(load_data(str(tmp_path), loaded, batch_size=2))
    assert len(batches) == 1
    x, y = batches[0]
    assert tuple(x.shape) == (2, 3, 224, 224) and y.tolist() == [0, 1]


def test_timm_spec_scans_its_gelu_sites() -> None:
    from deadrelu.zoo import import_torchvision

    import_torchvision()  # before timm, which imports torchvision
    pytest.importorskip("timm")
    loaded = load_model("timm:convnext_atto")
    assert loaded.source == "timm" and loaded.input_shape == (3, 224, 224)
    report = scan(loaded.model, load_data("random:3x32x32", loaded, batches=1, batch_size=1))
    assert "stages.0.blocks.0.mlp.act" in report.stats
    assert {str(s.activation) for s in report.sites.values()} == {"gelu"}
