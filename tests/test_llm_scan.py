"""scan() over token streams of tiny random causal LMs (OPT with ReLU, Llama with SiLU):
padding excluded via the attention mask, tokens counted, bfloat16, max_tokens, and
resumable checkpoints. Ground truth by construction (killed FFN units) or by an
independent oracle (a forward hook on the FFN activation that counts the real tokens'
pre-activations itself)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from deadrelu import native
from deadrelu.report import Report
from deadrelu.scan import scan
from deadrelu.scan_state import checkpoint_path
from deadrelu.stats import UnitStats
from deadrelu.zoo import import_torchvision
from models import DEAD_BIAS, OPT_DEAD, DeadMLP, tiny_opt
from test_capture import no_hooks_left

import_torchvision()  # before transformers, which imports it
transformers = pytest.importorskip("transformers", reason="transformers not installed")

VOCAB = 64
#: FFN units of the tiny Llama killed by construction (gate bias -1000), by site
LLAMA_DEAD = {"model.layers.0.mlp.act_fn": [1, 7], "model.layers.1.mlp.act_fn": [4]}
#: FFN units given bias 0 (active on some tokens only), the others +10 (always active)
MIXED = list(range(10, 20))
#: the sequences every test scans: lengths 7, 3, 5, 1, 6, 4 of random token ids in 1..63
LENGTHS = (7, 3, 5, 1, 6, 4)


def opt_mixed() -> Any:
    """:func:`models.tiny_opt` (dead units :data:`models.OPT_DEAD`, others bias +10) with
    the :data:`MIXED` units' fc1 bias 0, so that their counts are partial."""
    model = tiny_opt(transformers)
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.fc1.bias[MIXED] = 0.0
    return model


def tiny_llama(mixed: bool = True) -> Any:
    """A 2-layer Llama (hidden 16, SiLU gated FFN of 24 with biases, random init, seed 0):
    gate biases -1000 at :data:`LLAMA_DEAD` (z ~ -1000: never > 0, dead as deadrelu
    defines it for SiLU), 0 at :data:`MIXED` (with ``mixed``), +10 elsewhere."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        mlp_bias=True,
    )
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            layer.mlp.gate_proj.bias.fill_(10.0)
            if mixed:
                layer.mlp.gate_proj.bias[MIXED] = 0.0
            layer.mlp.gate_proj.bias[LLAMA_DEAD[f"model.layers.{i}.mlp.act_fn"]] = DEAD_BIAS
    return model


MODELS: dict[str, Callable[[], Any]] = {"opt": opt_mixed, "llama": tiny_llama}
KILLED = {"opt": OPT_DEAD, "llama": LLAMA_DEAD}


def act_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The FFN activation modules by deadrelu site name."""
    return {
        name: m
        for name, m in model.named_modules()
        if name.endswith(".activation_fn") or name.endswith(".mlp.act_fn")
    }


def sequences(seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=g) for n in LENGTHS]


def padded(seqs: list[Tensor], side: str) -> dict[str, Tensor]:
    """One batch of ``seqs`` padded with token 0 on ``side``, with its attention mask and
    the position ids of the real tokens (0, 1, ... from each sequence's first token, as
    Hugging Face's ``generate`` passes them for left padding)."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, cols], mask[i, cols] = s, 1
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


def padded_batches(side: str, seqs: list[Tensor] | None = None) -> list[dict[str, Tensor]]:
    """The sequences in batches of 2 and 4 (every batch has padding)."""
    seqs = sequences() if seqs is None else seqs
    return [padded(seqs[:2], side), padded(seqs[2:], side)]


def one_by_one(seqs: list[Tensor] | None = None) -> list[dict[str, Tensor]]:
    """Each sequence alone, unpadded, without a mask."""
    return [{"input_ids": s[None]} for s in (sequences() if seqs is None else seqs)]


def assert_same_stats(got: Report, ref: Report, rtol: float = 1e-6) -> None:
    """Counts and extrema-derived classes exactly, sums and moments within ``rtol``
    (relative to the largest value of the field: values near 0 are differences of
    rounding)."""
    assert list(got.stats) == list(ref.stats)
    for site, s in got.stats.items():
        r = ref.stats[site]
        for name in ("positions", "active", "nonfinite"):
            assert torch.equal(getattr(s, name), getattr(r, name)), (site, name)
        for name in ("abs_sum", "z_sum", "z_m2", "z_max", "z_min"):
            a, b = getattr(s, name), getattr(r, name)
            scale = float(b.abs().max())
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale, msg=f"{site} {name}")


class Oracle:
    """Forward hooks on the FFN activation modules that keep, per site, the pre-activations
    of the real tokens (``(K, U)`` float64), written without deadrelu."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.z: dict[str, list[Tensor]] = {}
        self.mask: Tensor | None = None

    def run(self, batches: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        handles = []
        for name, module in act_modules(self.model).items():

            def hook(mod: nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
                z = args[0].detach()
                flat = z.reshape(-1, z.shape[-1])  # (B*T, U) for (B, T, U) and OPT's (B*T, U)
                keep = torch.ones(flat.shape[0], dtype=torch.bool)
                if self.mask is not None:
                    keep = self.mask.reshape(-1).bool()
                self.z.setdefault(name, []).append(flat[keep].double())

            handles.append(module.register_forward_hook(hook))
        try:
            self.model.eval()
            with torch.no_grad():
                for batch in batches:
                    self.mask = batch.get("attention_mask")
                    self.model(**batch)
        finally:
            for h in handles:
                h.remove()
        return {name: torch.cat(zs) for name, zs in self.z.items()}


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_padded_batches_equal_unpadded_sequences_and_the_oracle(arch: str, side: str) -> None:
    """Padded batches (right or left padding) give the statistics of the sequences scanned
    one by one without padding (counts exactly, moments to 1e-6), and the counts of an
    independent forward-hook oracle over the real tokens; killed units are dead. In
    float64, so that the two forwards' rounding (float32: z differs by ~1e-6 at z ~ 10,
    which moves the M2 of a unit of small spread by ~1e-5) does not hide the scan's own."""
    model = MODELS[arch]().double()
    batches = padded_batches(side)
    z = Oracle(model).run(batches)
    ref = scan(model, one_by_one(), detail="full")
    got = scan(model, batches, detail="full")
    assert no_hooks_left(model)
    # the oracle: positions = real tokens, active = count of z > 0, extrema
    assert got.meta["tokens"] == ref.meta["tokens"] == sum(LENGTHS)
    assert got.meta["mask"] == "attention_mask" and ref.meta["mask"] is None
    assert got.meta["masked_sites"] == list(act_modules(model)) == list(got.stats)
    assert got.meta["unmasked_sites"] == []
    for site, zs in z.items():
        s = got.stats[site]
        assert zs.shape[0] == sum(LENGTHS)
        # the counts below are exact only if no z is within rounding of 0 (precondition)
        assert float(zs.abs().min()) > 1e-4
        assert int(s.positions) == zs.shape[0]
        assert s.active.tolist() == (zs > 0).sum(0).tolist()
        partial = [a for a in s.active[MIXED].tolist() if 0 < a < zs.shape[0]]
        assert partial, "some unit must be active on some tokens only"
        torch.testing.assert_close(s.z_max, zs.amax(0), rtol=1e-6, atol=0)
        torch.testing.assert_close(s.z_min, zs.amin(0), rtol=1e-6, atol=0)
        torch.testing.assert_close(s.z_sum, zs.sum(0), rtol=1e-6, atol=1e-6)
        assert int(s.nonfinite.sum()) == 0
        dead = got.dead_units(site)
        assert dead == torch.nonzero((zs > 0).sum(0) == 0).flatten().tolist()
        assert set(KILLED[arch][site]) <= set(dead)  # (a bias-0 unit may die on this data)
    assert_same_stats(got, ref)


@pytest.mark.parametrize("kernel", ["eager", "native", "compiled", "auto"])
def test_masking_with_every_kernel(kernel: str) -> None:
    """Every kernel (float32, where the native one applies) reduces the real tokens only:
    the statistics of the oracle over the same padded forward (counts and extrema
    exactly, sums and M2 to 1e-6 of their largest value)."""
    if kernel == "native" and not native.available():
        pytest.skip("no C++ compiler for the native kernel")
    model = opt_mixed()
    batches = padded_batches("right")
    z = Oracle(model).run(batches)
    got = scan(model, batches, detail="full", kernel=kernel)  # type: ignore[arg-type]
    if kernel != "auto":
        assert got.meta["kernels"]["ran"] == [kernel]
    for site, zs in z.items():
        s = got.stats[site]
        assert int(s.positions) == zs.shape[0] == sum(LENGTHS)
        assert s.active.tolist() == (zs > 0).sum(0).tolist()
        assert torch.equal(s.z_max, zs.amax(0)) and torch.equal(s.z_min, zs.amin(0))
        m2 = ((zs - zs.mean(0)) ** 2).sum(0)
        for got_t, want in ((s.z_sum, zs.sum(0)), (s.abs_sum, zs.relu().sum(0)), (s.z_m2, m2)):
            scale = float(want.abs().max())
            torch.testing.assert_close(got_t, want, rtol=1e-6, atol=1e-6 * scale)


class TokenModel(nn.Module):
    """Embedding -> Linear -> in-place ReLU -> Linear, position-wise (padding cannot change
    a real token's activations), plus a ReLU on the mean over tokens ``(B, D)`` that does
    not line up with the mask. Unit 0 of the FFN is dead (bias -1000)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 8)
        self.fc1 = nn.Linear(8, 12)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(12, 8)
        self.pool_act = nn.ReLU()
        with torch.no_grad():
            self.fc1.bias[0] = DEAD_BIAS

    def forward(self, input_ids: Tensor, **_: Tensor) -> Tensor:
        h = self.fc2(self.act(self.fc1(self.embed(input_ids))))
        return self.pool_act(h.mean(1))


@pytest.mark.parametrize("kernel", ["eager", "auto"])
def test_inplace_relu_masked_and_unaligned_site_reported(kernel: str) -> None:
    """An in-place ReLU at (B, T, U) is masked (oracle: the embeddings of the real tokens
    through fc1); a site of shape (B, D) is scanned whole, named in unmasked_sites, with
    a warning."""
    model = TokenModel()
    seqs = sequences()
    with pytest.warns(UserWarning, match="include padding positions, if any: pool_act"):
        got = scan(model, padded_batches("right"), detail="full", kernel=kernel)  # type: ignore[arg-type]
    with torch.no_grad():
        z = model.fc1(model.embed(torch.cat(seqs))).double()  # (K, 12), real tokens only
    s = got.stats["act"]
    assert got.meta["masked_sites"] == ["act"] and got.meta["unmasked_sites"] == ["pool_act"]
    assert int(s.positions) == sum(LENGTHS)
    assert s.active.tolist() == (z > 0).sum(0).tolist()
    torch.testing.assert_close(s.abs_sum, z.clamp_min(0).sum(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.z_max, z.amax(0), rtol=1e-6, atol=0)
    assert int(got.stats["pool_act"].positions) == len(LENGTHS)  # one per sequence
    assert got.dead_units("act") == [0]


def test_mask_false_and_named_key() -> None:
    """mask=False scans the padding too (every position of the batch); mask='key' reads
    the mask from that key and raises naming it when a batch lacks it."""
    model = opt_mixed()
    batches = padded_batches("right")
    whole = scan(model, batches, mask=False)
    width = sum(b["input_ids"].numel() for b in batches)
    assert whole.meta["tokens"] == width and whole.meta["masked_sites"] == []
    assert all(int(s.positions) == width for s in whole.stats.values())
    renamed = [{**b, "pad_mask": b["attention_mask"]} for b in batches]
    named = scan(model, renamed, mask="pad_mask", detail="full")
    assert_same_stats(named, scan(model, batches, detail="full"))
    with pytest.raises(ValueError, match="no key 'my_mask'"):
        scan(model, batches, mask="my_mask")


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_bfloat16_dead_sets_equal_float32_on_killed_units(arch: str) -> None:
    """The model in bfloat16: the killed units are dead exactly as in float32, the
    accumulators are float64, counts and sums equal an oracle over the same bfloat16
    activations summed in float64, and the native kernel (float32 only) does not run.
    Every unit not killed has bias +10: alive at every token in both dtypes."""
    model = tiny_opt(transformers) if arch == "opt" else tiny_llama(mixed=False)
    batches = padded_batches("left")
    f32 = scan(model, batches, detail="full")
    model16 = model.to(torch.bfloat16)
    z = Oracle(model16).run(batches)
    for kernel in ("auto", "native", "compiled", "eager"):
        b16 = scan(model16, batches, detail="full", kernel=kernel)
        ran = b16.meta["kernels"]["ran"]
        assert "native" not in ran and (
            kernel == "auto" or ran == [kernel.replace("native", "eager")]
        )
        assert b16.all_units("dead") == f32.all_units("dead") == KILLED[arch]
        for site, zs in z.items():
            s = b16.stats[site]
            assert s.abs_sum.dtype == s.z_sum.dtype == s.z_max.dtype == torch.float64
            assert int(s.positions) == zs.shape[0]
            assert s.active.tolist() == (zs > 0).sum(0).tolist()
            torch.testing.assert_close(s.z_sum, zs.sum(0), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(s.z_max, zs.amax(0), rtol=0, atol=0)


def test_max_tokens_stops_after_the_batch_that_reaches_it() -> None:
    """Batches of 7+3, 5+1, 6+4 real tokens: max_tokens=11 stops after the second batch
    (16 tokens), max_tokens=10 after the first; statistics hold exactly those tokens."""
    model = opt_mixed()
    seqs = sequences()
    batches = [padded(seqs[i : i + 2], "right") for i in (0, 2, 4)]
    for limit, n_batches, tokens in ((10, 1, 10), (11, 2, 16), (10**6, 3, 26)):
        report = scan(model, batches, max_tokens=limit)
        assert (report.meta["batches"], report.meta["tokens"]) == (n_batches, tokens)
        assert all(int(s.positions) == tokens for s in report.stats.values())
    ids = torch.randint(1, VOCAB, (3, 5))
    assert scan(model, [ids, ids], max_tokens=15).meta["batches"] == 1  # token-id tensors
    mlp = DeadMLP()
    assert scan(mlp, mlp.make_batches(1)).meta["tokens"] is None
    with pytest.raises(ValueError, match="max_tokens needs batches that carry tokens"):
        scan(mlp, mlp.make_batches(1), max_tokens=5)
    with pytest.raises(ValueError, match="max_tokens must be an int >= 1"):
        scan(model, batches, max_tokens=0)


def test_progress_bar_with_tokens() -> None:
    model = opt_mixed()
    report = scan(model, padded_batches("right"), progress=True, max_tokens=10**6)
    assert report.meta["tokens"] == sum(LENGTHS)


def _crashing(batches: list[Any], after: int) -> Iterator[Any]:
    """The batches, then a crash (an exception from the data iterator) after ``after``."""
    for i, b in enumerate(batches):
        if i == after:
            raise RuntimeError("simulated crash")
        yield b


def _many_batches() -> list[dict[str, Tensor]]:
    seqs = sequences(1) + sequences(2) + sequences(3)
    return [padded(seqs[i : i + 3], "left" if i % 2 else "right") for i in range(0, 18, 3)]


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_resume_after_a_crash_equals_an_uninterrupted_scan(arch: str, tmp_path: Path) -> None:
    """A scan that crashes after 5 of 6 batches (checkpoint every 2) and is started again
    with the same checkpoint equals one uninterrupted scan; a third call returns the
    finished scan without reading the data."""
    model = MODELS[arch]()
    batches = _many_batches()
    ref = scan(model, batches, detail="full")
    ckpt = tmp_path / "scan.ckpt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        scan(model, _crashing(batches, 5), detail="full", checkpoint=ckpt, checkpoint_every=2)
    assert ckpt.exists() and not list(tmp_path.glob("*.tmp*"))
    assert no_hooks_left(model)
    resumed = scan(model, batches, detail="full", checkpoint=ckpt, checkpoint_every=2)
    assert resumed.meta["checkpoint"]["resumed_from"] == 4
    assert resumed.meta["batches"] == ref.meta["batches"] == 6
    assert resumed.meta["tokens"] == ref.meta["tokens"]
    assert resumed.meta["masked_sites"] == ref.meta["masked_sites"]
    assert_same_stats(resumed, ref)
    for site, killed in KILLED[arch].items():
        assert set(killed) <= set(resumed.dead_units(site))

    def unread() -> Iterator[Any]:
        raise AssertionError("a finished checkpoint must not read the data")
        yield

    again = scan(model, unread(), detail="full", checkpoint=ckpt)
    assert again.meta["checkpoint"]["resumed_from"] == 6
    assert_same_stats(again, ref, rtol=0)


def test_resume_continues_a_scan_stopped_by_a_limit(tmp_path: Path) -> None:
    """Stopped by max_batches, the same call returns it as is; a larger limit goes on from
    where it stopped; the end equals one scan to that limit."""
    model = opt_mixed()
    batches = _many_batches()
    ckpt = tmp_path / "c.pt"
    first = scan(model, batches, max_batches=2, detail="full", checkpoint=ckpt)
    assert_same_stats(first, scan(model, batches, max_batches=2, detail="full"))
    same = scan(model, iter(()), max_batches=2, detail="full", checkpoint=ckpt)
    assert_same_stats(same, first, rtol=0)
    more = scan(model, batches, max_batches=5, detail="full", checkpoint=ckpt)
    assert more.meta["checkpoint"]["resumed_from"] == 2
    assert_same_stats(more, scan(model, batches, max_batches=5, detail="full"))


def test_mismatched_checkpoint_raises(tmp_path: Path) -> None:
    """Another model's weights, another detail, another mask, a file that is no
    checkpoint, or data shorter than the checkpoint: ValueError naming the problem."""
    model = opt_mixed()
    batches = _many_batches()
    ckpt = tmp_path / "c.pt"
    scan(model, batches[:3], detail="full", checkpoint=ckpt)
    other = opt_mixed()
    with torch.no_grad():
        other.model.decoder.layers[0].fc1.weight.mul_(2)
    with pytest.raises(ValueError, match="weights"):
        scan(other, batches, detail="full", checkpoint=ckpt)
    with pytest.raises(ValueError, match="model class OPTForCausalLM differs"):
        scan(tiny_llama(), batches, detail="full", checkpoint=ckpt)
    shallower = opt_mixed()
    shallower.model.decoder.layers = shallower.model.decoder.layers[:1]
    with pytest.raises(ValueError, match="parameter names/shapes"):
        scan(shallower, batches, detail="full", checkpoint=ckpt)
    with pytest.raises(ValueError, match="detail="):
        scan(model, batches, detail="range", checkpoint=ckpt)
    with pytest.raises(ValueError, match="mask="):
        scan(model, batches, detail="full", mask=False, checkpoint=ckpt)
    stopped = tmp_path / "stopped.pt"
    scan(model, batches, max_batches=3, checkpoint=stopped)  # not finished: data left
    with pytest.raises(ValueError, match="has read 3 batches but data yields only 2"):
        scan(model, batches[:2], max_batches=5, checkpoint=stopped)
    junk = tmp_path / "junk.pt"
    torch.save({"a": 1}, junk)
    with pytest.raises(ValueError, match="not a deadrelu scan checkpoint"):
        scan(model, batches, checkpoint=junk)
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot be read"):
        scan(model, batches, checkpoint=junk)
    with pytest.raises(ValueError, match="checkpoint_every must be an int >= 1"):
        scan(model, batches, checkpoint=ckpt, checkpoint_every=0)


def test_checkpoint_file_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torch.distributed with several processes each rank has its own file."""
    import torch.distributed as dist

    assert checkpoint_path("/x/scan.ckpt") == Path("/x/scan.ckpt")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 4)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 3)
    assert checkpoint_path("/x/scan.ckpt") == Path("/x/scan.ckpt.rank3")


@pytest.mark.parametrize("detail", ["counts", "range", "full"])
def test_statistics_of_a_million_units_fit_in_100_mb(detail: str) -> None:
    stats = UnitStats.empty(10**6, detail=detail)  # type: ignore[arg-type]
    assert stats.nbytes <= 100 * 2**20
    z = torch.randn(4, 10**6)
    stats.update(z, z.relu(), -1, kernel="eager")
    assert stats.nbytes <= 100 * 2**20
    assert int(stats.positions) == 4


def test_a_crash_while_writing_the_checkpoint_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint is replaced atomically: a write that dies half-way leaves the last
    complete checkpoint (and no temporary file), from which the scan resumes exactly."""
    import deadrelu.scan_state as scan_state

    model = opt_mixed()
    batches = _many_batches()
    ckpt = tmp_path / "c.pt"
    scan(model, batches, max_batches=2, detail="full", checkpoint=ckpt)
    before = ckpt.read_bytes()
    real_save = torch.save

    def dying_save(obj: Any, f: Any) -> None:
        real_save(obj, f)
        f.truncate(100)  # half a file on disk, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(scan_state.torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        scan(model, batches, max_batches=4, detail="full", checkpoint=ckpt, checkpoint_every=1)
    monkeypatch.setattr(scan_state.torch, "save", real_save)
    assert ckpt.read_bytes() == before and sorted(tmp_path.iterdir()) == [ckpt]
    resumed = scan(model, batches, max_batches=4, detail="full", checkpoint=ckpt)
    assert resumed.meta["checkpoint"]["resumed_from"] == 2
    assert_same_stats(resumed, scan(model, batches, max_batches=4, detail="full"))
