"""Real architectures (torchvision, timm, Hugging Face transformers; random init, tiny
inputs) against an independent oracle written here.

The oracle does not use ``deadrelu.capture``: plain forward pre-hooks on the activation
modules and a :class:`~torch.overrides.TorchFunctionMode` catching functional activations
(``F.relu``, ``x.relu_()``, ``F.gelu`` ...) called outside them count, per call site and
unit, the positions where ``z > 0``. Its unit axis is written per architecture (channels
of a conv map, the last dim of a token sequence), not inferred. Call sites are named
independently by the same public rule (module path; ``path:function`` for a call in
``path``'s forward; ``#k`` for the k-th repeat in a forward).

``scan`` must equal the oracle site by site and unit by unit, and the units each test
kills by construction (a producer's bias at -1000, or a weight row of zeros so that
z = 0 for a bias-free layer) must be among the dead. Marked ``zoo``
(``pytest -m zoo`` / ``-m "not zoo"``); skipped only where the packages are missing.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import deadrelu as dr

pytestmark = pytest.mark.zoo

try:
    from deadrelu.zoo import import_torchvision

    torchvision = import_torchvision()  # before timm and transformers, which import it
except ImportError as exc:
    pytest.skip(f"the zoo extra is not installed ({exc})", allow_module_level=True)
timm = pytest.importorskip("timm", reason="timm is not installed (the zoo extra)")
transformers = pytest.importorskip("transformers", reason="transformers not installed (zoo)")
hf_acts = pytest.importorskip("transformers.activations")

# ------------------------------------------------------------------------------- the oracle

#: Activation modules, by the classes the models really use.
ORACLE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    hf_acts.GELUActivation,
    hf_acts.NewGELUActivation,
    hf_acts.SiLUActivation,
    timm.layers.activations.GELU,
    timm.layers.activations.GELUTanh,
    timm.layers.activations.Swish,
    timm.layers.activations.HardSwish,
    timm.layers.activations.HardSigmoid,
)
#: Functional activations -> the registry name a functional site carries.
ORACLE_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu",
    F.relu_: "relu",
    torch.relu: "relu",
    torch.relu_: "relu",
    Tensor.relu: "relu",
    Tensor.relu_: "relu",
    F.relu6: "relu6",
    F.gelu: "gelu",
    F.silu: "silu",
    F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid",
}

#: ``axis(site name, z) -> unit dim``, written per architecture.
Axis = Callable[[str, Tensor], int]


def conv_axis(name: str, z: Tensor) -> int:
    """Convolutional nets: channels of ``(N, C, H, W)``; features of ``(N, D)``."""
    return 1 if z.dim() == 4 else -1


def last_axis(name: str, z: Tensor) -> int:
    """Token sequences ``(N, T, D)``: the last dim."""
    return -1


@dataclass
class Oracle:
    """Active counts ``(U,)`` and positions per call site, by hooks and a function mode."""

    axis: Axis
    active: dict[str, Tensor] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)
    stack: list[str] = field(default_factory=list)
    in_activation: int = 0
    repeats: Counter[str] = field(default_factory=Counter)

    def record(self, base: str, z: Tensor) -> None:
        k = self.repeats[base]
        self.repeats[base] += 1
        name = base if k == 0 else f"{base}#{k}"
        d = self.axis(name, z) % z.dim()
        flat = (z.detach() > 0).movedim(d, 0).reshape(z.shape[d], -1)
        counts = flat.sum(dim=1, dtype=torch.int64)
        self.active[name] = self.active.get(name, torch.zeros_like(counts)) + counts
        self.positions[name] = self.positions.get(name, 0) + flat.shape[1]


class _OracleMode(TorchFunctionMode):
    def __init__(self, oracle: Oracle) -> None:
        super().__init__()
        self.oracle = oracle

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        try:
            name = ORACLE_FUNCTIONS.get(func)
        except TypeError:
            name = None
        o = self.oracle
        if name is not None and not o.in_activation and o.stack and isinstance(args[0], Tensor):
            o.record(f"{o.stack[-1]}:{name}", args[0])  # before an in-place call changes it
        return func(*args, **kwargs)


@contextmanager
def oracle_on(model: nn.Module, axis: Axis) -> Iterator[Oracle]:
    oracle = Oracle(axis)
    handles = []
    for path, module in model.named_modules():
        is_act = isinstance(module, ORACLE_MODULES)

        def pre(
            m: nn.Module, args: tuple[Any, ...], path: str = path, is_act: bool = is_act
        ) -> None:
            if not oracle.stack:
                oracle.repeats.clear()
            oracle.stack.append(path)
            if is_act:
                if not oracle.in_activation:
                    oracle.record(path, args[0])
                oracle.in_activation += 1

        def post(m: nn.Module, args: Any, out: Any, is_act: bool = is_act) -> None:
            oracle.stack.pop()
            if is_act:
                oracle.in_activation -= 1

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post, always_call=True))
    try:
        with _OracleMode(oracle):
            yield oracle
    finally:
        for h in handles:
            h.remove()


def _call(model: nn.Module, batch: Tensor | Mapping[str, Tensor]) -> None:
    if isinstance(batch, Mapping):
        model(**batch)
    else:
        model(batch)


# ------------------------------------------------------------------------------- the check


@dataclass
class Case:
    """A model with units killed by construction, its input and its oracle's unit axis."""

    model: nn.Module
    batch: Tensor | dict[str, Tensor]
    killed: dict[str, list[int]]
    axis: Axis
    unrecognised: dict[str, str] = field(default_factory=dict)


def _kill_bias(layer: nn.Module, units: list[int], value: float = -1000.0) -> None:
    with torch.no_grad():
        cast(Tensor, layer.bias)[units] = value


def _zero_rows(layer: nn.Module, units: list[int]) -> None:
    """A bias-free layer: weight rows of zeros give z = 0 exactly, never z > 0."""
    with torch.no_grad():
        cast(Tensor, layer.weight)[units] = 0.0


def check(case: Case) -> dr.Report:
    """scan == oracle at every site and unit; the killed units are dead; returns the report."""
    model = case.model.eval()
    with oracle_on(model, case.axis) as oracle, torch.no_grad():
        _call(model, case.batch)
    assert oracle.active, "the oracle saw no activation"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = dr.scan(model, case.batch)
    assert list(report.sites) == list(oracle.active)  # names, and order of first call
    for name, counts in oracle.active.items():
        stats = report.stats[name]
        assert torch.equal(stats.active, counts), name
        assert int(stats.positions) == oracle.positions[name], name
    for name, units in case.killed.items():
        dead = report.dead_units(name)
        assert set(units) <= set(dead), (name, units, dead)
        assert dead == torch.nonzero(oracle.active[name] == 0).flatten().tolist()
    assert report.meta["unrecognised"] == case.unrecognised
    unit_warnings = [w for w in caught if issubclass(w.category, dr.capture.UnitAxisWarning)]
    assert not unit_warnings
    return report


# ------------------------------------------------------------------------------- the models

G = torch.Generator().manual_seed(0)


def _images(size: int = 32, n: int = 2) -> Tensor:
    return torch.randn(n, 3, size, size, generator=G)


def _tokens(n: int = 2, length: int = 8, vocab: int = 100) -> dict[str, Tensor]:
    return {"input_ids": torch.randint(0, vocab, (n, length), generator=G)}


def resnet18() -> Case:
    torch.manual_seed(0)
    m = torchvision.models.resnet18()
    _kill_bias(m.bn1, [5])  # the stem's relu
    _kill_bias(m.layer1[0].bn1, [0, 7])  # first call of the block's reused in-place relu
    return Case(m, _images(), {"relu": [5], "layer1.0.relu": [0, 7]}, conv_axis)


def mobilenet_v2() -> Case:
    torch.manual_seed(0)
    m = torchvision.models.mobilenet_v2()
    _kill_bias(m.features[0][1], [3])  # Conv2dNormActivation: conv, BN, ReLU6(inplace)
    return Case(m, _images(), {"features.0.2": [3]}, conv_axis)


def densenet121() -> Case:
    torch.manual_seed(0)
    m = torchvision.models.densenet121()
    _kill_bias(m.features.norm5, [10, 1000])  # the root forward's F.relu(..., inplace=True)
    return Case(m, _images(n=1), {":relu": [10, 1000]}, conv_axis)


def mobilenetv3() -> Case:
    torch.manual_seed(0)
    m = timm.create_model("mobilenetv3_small_050")
    _kill_bias(m.bn1, [2])  # BatchNormAct2d: BN then Hardswish
    return Case(m, _images(), {"bn1.act": [2]}, conv_axis)


def convnext() -> Case:
    torch.manual_seed(0)
    # conv_mlp: 1x1 convs on (N, C, H, W); one block per stage (kwargs override timm's)
    m = timm.create_model("convnext_atto", depths=(1, 1, 1, 1))
    _kill_bias(m.stages[0].blocks[0].mlp.fc1, [4])
    return Case(m, _images(), {"stages.0.blocks.0.mlp.act": [4]}, conv_axis)


def vit() -> Case:
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=3)
    _kill_bias(m.blocks[0].mlp.fc1, [1, 100])
    return Case(m, _images(), {"blocks.0.mlp.act": [1, 100]}, last_axis)


def vitamin_stem() -> Case:
    """ViTamin's stem (Conv, LayerNormAct2d: LayerNorm over channels in NHWC + GELU, Conv):
    the whole model is too big for this file's time budget."""
    from timm.models.vitamin import Stem

    torch.manual_seed(0)
    m = Stem(3, 16)
    _kill_bias(m.norm1, [6], -100.0)  # a LayerNorm's output is within +-sqrt(C - 1)
    return Case(m, _images(16), {"norm1.act": [6]}, conv_axis)


_SMALL = {"num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 100}


def opt() -> Case:
    torch.manual_seed(0)
    cfg = transformers.OPTConfig(
        hidden_size=32, ffn_dim=48, word_embed_proj_dim=32, max_position_embeddings=64, **_SMALL
    )
    m = transformers.OPTModel(cfg)
    _kill_bias(m.decoder.layers[0].fc1, [3])
    return Case(m, _tokens(), {"decoder.layers.0.activation_fn": [3]}, last_axis)


def t5() -> Case:
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        d_model=32,
        d_ff=48,
        d_kv=16,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        vocab_size=100,
        feed_forward_proj="relu",
    )
    m = transformers.T5Model(cfg)
    _zero_rows(m.encoder.block[0].layer[1].DenseReluDense.wi, [5, 6])  # no bias in T5
    batch = _tokens()
    batch["decoder_input_ids"] = batch["input_ids"][:, :5]
    return Case(m, batch, {"encoder.block.0.layer.1.DenseReluDense.act": [5, 6]}, last_axis)


def bert() -> Case:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=32, intermediate_size=48, max_position_embeddings=64, **_SMALL
    )
    m = transformers.BertModel(cfg)
    _kill_bias(m.encoder.layer[1].intermediate.dense, [0])
    # the pooler's Tanh (after a Linear) is an activation deadrelu does not measure: listed
    return Case(
        m,
        _tokens(),
        {"encoder.layer.1.intermediate.intermediate_act_fn": [0]},
        last_axis,
        unrecognised={"pooler.activation": "Tanh"},
    )


def gpt2() -> Case:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_inner=48, vocab_size=100, n_positions=64
    )
    m = transformers.GPT2Model(cfg)
    _kill_bias(m.h[1].mlp.c_fc, [47])  # NewGELUActivation (gelu_new) follows
    return Case(m, _tokens(), {"h.1.mlp.act": [47]}, last_axis)


def llama() -> Case:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **_SMALL,
    )
    m = transformers.LlamaModel(cfg)
    _zero_rows(m.layers[0].mlp.gate_proj, [9])  # silu(gate(x)) * up(x); no bias
    return Case(m, _tokens(), {"layers.0.mlp.act_fn": [9]}, last_axis)


def wav2vec2() -> Case:
    """feat_extract_norm="layer": each feature-extractor Conv1d is followed by a LayerNorm
    over channels, applied through transposes; the positional conv also gives (N, C, T)."""
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        conv_dim=(16, 16),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        feat_extract_norm="layer",
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    m = transformers.Wav2Vec2Model(cfg)
    _kill_bias(m.feature_extractor.conv_layers[0].layer_norm, [11], -100.0)

    def axis(name: str, z: Tensor) -> int:
        return 1 if name.startswith(("feature_extractor.", "encoder.pos_conv_embed.")) else -1

    x = torch.randn(2, 400, generator=G)
    return Case(m, x, {"feature_extractor.conv_layers.0.activation": [11]}, axis)


CASES: dict[str, Callable[[], Case]] = {
    f.__name__: f
    for f in (
        resnet18,
        mobilenet_v2,
        densenet121,
        mobilenetv3,
        convnext,
        vit,
        vitamin_stem,
        opt,
        t5,
        bert,
        gpt2,
        llama,
        wav2vec2,
    )
}


def _hardswish_sites(report: dr.Report) -> None:
    kinds = Counter(s.activation.name for s in report.sites.values())
    assert kinds["hardswish"] >= 10 and kinds["hardsigmoid"] >= 1, kinds


def _gelu_new_module(report: dr.Report) -> None:
    assert str(report.sites["h.0.mlp.act"].activation) == "gelu(approximate='tanh')"


def _reused_relu(report: dr.Report) -> None:
    assert {"layer1.0.relu", "layer1.0.relu#1"} <= set(report.sites)


def _channels(site: str, units: int) -> Callable[[dr.Report], None]:
    def check_site(report: dr.Report) -> None:
        assert report.sites[site].unit_dim == 1 and report.stats[site].units == units

    return check_site


#: What makes each model awkward is really there (beyond scan == oracle).
AWKWARD: dict[str, Callable[[dr.Report], None]] = {
    "resnet18": _reused_relu,
    "densenet121": lambda r: None if ":relu" in r.sites else pytest.fail(":relu missing"),
    "mobilenetv3": _hardswish_sites,
    "gpt2": _gelu_new_module,
    "wav2vec2": _channels("feature_extractor.conv_layers.0.activation", 16),
    "vitamin_stem": _channels("norm1.act", 16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_scan_equals_oracle(name: str) -> None:
    report = check(CASES[name]())
    if name in AWKWARD:
        AWKWARD[name](report)


@pytest.mark.parametrize("name", ["resnet18", "gpt2"])
def test_monitor_agrees_with_scan(name: str) -> None:
    case = CASES[name]()
    model = case.model.eval()
    batches = [case.batch, case.batch]
    report = dr.scan(model, batches)
    mon = dr.Monitor(model, every=1, window=4, training_only=False)
    with mon, torch.no_grad():
        for batch in batches:
            _call(model, batch)
            mon.step()
    stats = mon.statistics()
    assert list(stats) == list(report.sites)
    for site, s in stats.items():
        assert torch.equal(s.active, report.stats[site].active), site
        assert mon.dead_units(site) == report.dead_units(site), site
    for site, units in case.killed.items():
        assert set(units) <= set(mon.dead_units(site))
