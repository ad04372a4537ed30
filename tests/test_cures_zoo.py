"""Every cure on real architectures: torchvision resnet18 (traceable; a reused in-place
ReLU, BatchNorm, residual sums) and a tiny Hugging Face OPT with ReLU (2 layers, hidden 32;
torch.fx cannot trace it, dict batches).

Units are killed by construction (a BatchNorm shift or a producer bias of -1000), so the
dead units are known. Each cure must keep the outputs where it promises to (recycle on dead
units: to 1e-6; a swap to the identical activation: exactly), make the killed units alive
in a fresh scan, and leave nothing silently: every site with dead units is recycled or
listed in ``skipped`` with its reason. Marked ``zoo``; skipped where the packages are
missing.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from deadrelu.init import rai_init_
from deadrelu.remedies import RemedySummary, init_bias_, links_of, recycle, swap_activations
from deadrelu.scan import scan

pytestmark = pytest.mark.zoo

try:
    from deadrelu.zoo import import_torchvision

    torchvision = import_torchvision()  # before transformers, which imports it
except ImportError as exc:
    pytest.skip(f"the zoo extra is not installed ({exc})", allow_module_level=True)
transformers = pytest.importorskip("transformers", reason="transformers not installed (zoo)")

#: resnet18: (BatchNorm, channels) killed; each feeds the first ReLU call of its block.
RESNET_KILLED = {"layer1.0.bn1": [3, 10], "layer3.1.bn1": [7]}
RESNET_SITES = {"layer1.0.relu": [3, 10], "layer3.1.relu": [7]}
#: OPT: (layer, fc1 rows) killed.
OPT_KILLED = {0: [3, 7], 1: [0]}


def _resnet() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        for path, idx in RESNET_KILLED.items():
            model.get_submodule(path).bias[idx] = -1000.0
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return model, x


def _opt() -> tuple[nn.Module, dict[str, Tensor]]:
    torch.manual_seed(0)
    cfg = transformers.OPTConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
        num_attention_heads=4, max_position_embeddings=32, word_embed_proj_dim=32,
        activation_function="relu", dropout=0.0,
    )  # fmt: skip
    model = transformers.OPTForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer, idx in OPT_KILLED.items():
            model.model.decoder.layers[layer].fc1.bias[idx] = -1000.0
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(0, 64, (4, 12), generator=g),
        "attention_mask": torch.ones(4, 12, dtype=torch.long),
    }
    return model, batch


def _opt_sites() -> dict[str, list[int]]:
    return {f"model.decoder.layers.{k}.activation_fn": v for k, v in OPT_KILLED.items()}


def _out(model: nn.Module, batch: Any) -> Tensor:
    with torch.no_grad():
        out = model(**batch) if isinstance(batch, dict) else model(batch)
    return (out.logits if hasattr(out, "logits") else out).detach().clone()


def _nothing_silent(summary: RemedySummary, dead: dict[str, list[int]]) -> None:
    """Every site with dead units was acted on or is listed, with a reason, in skipped."""
    for site, idx in dead.items():
        if idx and site not in summary.units:
            assert any(
                s.startswith(f"{site}: ") and len(s) > len(site) + 8 for s in summary.skipped
            )


@pytest.mark.parametrize("arch", ["resnet18", "opt"])
def test_recycle_dead_units_outputs_exact_and_units_alive(arch: str) -> None:
    model, batch = _resnet() if arch == "resnet18" else _opt()
    killed = RESNET_SITES if arch == "resnet18" else _opt_sites()
    data = [batch]
    report = scan(model, data)
    dead = {s: report.dead_units(s) for s in report.sites}
    for site, idx in killed.items():
        assert set(idx) <= set(dead[site])
    before = _out(model, batch)
    summary = recycle(model, report, data=data, generator=torch.Generator().manual_seed(0))
    for site, idx in killed.items():
        assert set(idx) <= set(summary.units[site])  # killed units recycled
    assert summary.units == {s: v for s, v in dead.items() if s in summary.units}
    _nothing_silent(summary, dead)
    assert float((_out(model, batch) - before).abs().max()) <= 1e-6
    assert summary.max_output_change is not None and summary.max_output_change <= 1e-6
    fresh = scan(model, data)
    for site, idx in killed.items():
        assert not set(idx) & set(fresh.dead_units(site)), site  # alive again
        assert site not in summary.still_dead


@pytest.mark.parametrize("arch", ["resnet18", "opt"])
def test_swap_to_the_same_activation_keeps_outputs_and_leaves_nothing(arch: str) -> None:
    model, batch = _resnet() if arch == "resnet18" else _opt()
    before = _out(model, batch)
    summary = swap_activations(model, "relu", example_inputs=batch)
    assert summary.model is model and summary.changed
    assert not [s for s in summary.skipped if "still called" in s]
    assert torch.equal(_out(model, batch), before)
    leaky = swap_activations(model, "leaky_relu(0.01)", example_inputs=batch)
    assert len(leaky.changed) == len(summary.changed)
    assert not [s for s in leaky.skipped if "still called" in s]
    assert all(r.activation.name == "leaky_relu" for r in scan(model, [batch]).sites.values())


@pytest.mark.parametrize("arch", ["resnet18", "opt"])
def test_init_bias_on_the_dead_units_only_revives_them(arch: str) -> None:
    model, batch = _resnet() if arch == "resnet18" else _opt()
    killed = RESNET_SITES if arch == "resnet18" else _opt_sites()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = scan(model, [batch])
    summary = init_bias_(model, 0.01, units=report, example_inputs=batch)
    assert summary.units.keys() >= killed.keys()
    moved = {
        n: (p.detach() != params[n]).nonzero().flatten().tolist()
        for n, p in model.named_parameters()
        if not torch.equal(p.detach(), params[n])
    }
    assert all(n.endswith("bias") for n in moved)  # nothing but the dead units' biases
    assert sum(len(v) for v in moved.values()) == sum(len(v) for v in summary.units.values())
    fresh = scan(model, [batch])
    for site, idx in killed.items():
        assert not set(idx) & set(fresh.dead_units(site))


@pytest.mark.parametrize("arch", ["resnet18", "opt"])
def test_rai_init_changes_or_lists_every_site(arch: str) -> None:
    model, batch = _resnet() if arch == "resnet18" else _opt()
    links = links_of(model, batch)
    assert links.keys() == scan(model, [batch]).sites.keys()
    summary = rai_init_(model, example_inputs=batch, generator=torch.Generator().manual_seed(0))
    if arch == "opt":
        assert len(summary.changed) == 2 and not summary.skipped  # fc1 of both layers
    for site, lk in links.items():
        changed = any(c.startswith(f"{lk.producer}: RAI weights") for c in summary.changed)
        listed = any(s.startswith(f"{site}: ") for s in summary.skipped)
        assert changed or listed, site
        if lk.norm is not None and changed:
            assert listed  # BatchNorm after the producer undoes RAI's asymmetry: said so
