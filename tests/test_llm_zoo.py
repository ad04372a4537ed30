"""scan() with padding masks on Hugging Face architectures beyond OPT and Llama (tiny
random configs: 2 layers, hidden 32): GPT-2 (Conv1D, gelu_new), BERT (bidirectional
encoder, GELU), Mistral (SiLU gated), Phi, GPT-NeoX with right and left padding
(generation-style: position ids from the first real token) and a KV-cache step; the
encoder-decoders T5 (ReLU FFN) and BART, whose decoder must take its own mask, never
the encoder's (both padded to the same width here, so the encoder's lines up by shape);
the sites that must be left whole and reported rather than masked by a mask that is not
theirs: a decoder without a mask, an encoder-decoder whose parts are unknown, a
LLaVA's vision tower and projector, a top-1 MoE's routed experts, a sequence-first
model (FSMT) on a square batch.

The oracle is independent of deadrelu: forward hooks on the activation modules (named
here per architecture) keep their inputs z while each sequence runs alone, unpadded,
without a mask (an encoder-decoder: its encoder and decoder sequences alone), or, where
said, over the same forward, keeping the rows whose mask is 1. The masked scan must give
the oracle's positions, counts of z > 0, extrema and sums. In float64 (but the MoE),
so that the padded and the unpadded forwards' rounding (~1e-16) cannot flip a count
(precondition: no oracle z within 1e-6 of 0)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from deadrelu.report import Report
from deadrelu.scan import scan
from deadrelu.zoo import import_torchvision
from test_capture import no_hooks_left

import_torchvision()  # before transformers, which imports it
transformers = pytest.importorskip("transformers", reason="transformers not installed")

VOCAB = 64
#: lengths of the sequences scanned (encoder-decoders: encoder ones; decoders: DEC_LENGTHS)
LENGTHS = (7, 3, 5, 1, 6, 4)
#: decoder lengths, padded to the same width (7) as the encoder's: the case where the
#: encoder's mask lines up with the decoder's activations by shape
DEC_LENGTHS = (2, 7, 4, 6, 1, 5)
SMALL = {"vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=32, **SMALL)
    return transformers.GPT2LMHeadModel(cfg)


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=32,
        **SMALL,
    )
    return transformers.BertForMaskedLM(cfg)


def _mistral() -> nn.Module:
    cfg = transformers.MistralConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        **SMALL,
    )
    return transformers.MistralForCausalLM(cfg)


def _phi() -> nn.Module:
    cfg = transformers.PhiConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        **SMALL,
    )
    return transformers.PhiForCausalLM(cfg)


def _neox() -> nn.Module:
    cfg = transformers.GPTNeoXConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        **SMALL,
    )
    return transformers.GPTNeoXForCausalLM(cfg)


def _t5() -> nn.Module:
    cfg = transformers.T5Config(
        d_model=32, d_kv=16, d_ff=48, num_layers=2, num_heads=2, decoder_start_token_id=0, **SMALL
    )
    return transformers.T5ForConditionalGeneration(cfg)


def _bart() -> nn.Module:
    cfg = transformers.BartConfig(
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=32,
        **SMALL,
    )
    return transformers.BartForConditionalGeneration(cfg)


#: arch -> (builder, the FFN activation sites, by module path; written here, not found by
#: deadrelu: the scan must report exactly these)
DECODERS: dict[str, tuple[Callable[[], nn.Module], list[str]]] = {
    "gpt2": (_gpt2, [f"transformer.h.{i}.mlp.act" for i in (0, 1)]),
    "bert": (
        _bert,
        [f"bert.encoder.layer.{i}.intermediate.intermediate_act_fn" for i in (0, 1)]
        + ["cls.predictions.transform.transform_act_fn"],
    ),
    "mistral": (_mistral, [f"model.layers.{i}.mlp.act_fn" for i in (0, 1)]),
    "phi": (_phi, [f"model.layers.{i}.mlp.activation_fn" for i in (0, 1)]),
    "neox": (_neox, [f"gpt_neox.layers.{i}.mlp.act" for i in (0, 1)]),
}
ENC_DEC: dict[str, tuple[Callable[[], nn.Module], list[str], list[str]]] = {
    "t5": (
        _t5,
        [f"encoder.block.{i}.layer.1.DenseReluDense.act" for i in (0, 1)],
        [f"decoder.block.{i}.layer.2.DenseReluDense.act" for i in (0, 1)],
    ),
    "bart": (
        _bart,
        [f"model.encoder.layers.{i}.activation_fn" for i in (0, 1)],
        [f"model.decoder.layers.{i}.activation_fn" for i in (0, 1)],
    ),
}


def build(make: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return make().double().eval()


def sequences(lengths: tuple[int, ...], seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g) for n in lengths]


def pad(seqs: list[Tensor], side: str, width: int | None = None) -> tuple[Tensor, Tensor]:
    """``(ids, mask)`` of ``seqs`` padded with token 0 on ``side`` to ``width``."""
    width = max(len(s) for s in seqs) if width is None else width
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, cols], mask[i, cols] = s, 1
    return ids, mask


def lm_batches(seqs: list[Tensor], side: str) -> list[dict[str, Tensor]]:
    """Batches of 2 and 4 sequences (each with padding), with the attention mask and, as
    ``generate`` passes them for left padding, position ids counted from each sequence's
    first real token."""
    out = []
    for part in (seqs[:2], seqs[2:]):
        ids, mask = pad(part, side)
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        out.append({"input_ids": ids, "attention_mask": mask, "position_ids": positions})
    return out


class Oracle:
    """Forward hooks on the modules named ``sites`` that keep each call's input z as
    ``(positions, units)`` float64 rows (units last, as in every FFN here)."""

    def __init__(self, model: nn.Module, sites: list[str]) -> None:
        self.model = model
        self.sites = sites
        self.z: dict[str, list[Tensor]] = {name: [] for name in sites}

    def run(self, batches: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        modules = dict(self.model.named_modules())
        handles = []
        for name in self.sites:

            def hook(mod: nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
                z = args[0].detach()
                self.z[name].append(z.reshape(-1, z.shape[-1]).double())

            handles.append(modules[name].register_forward_hook(hook))
        try:
            with torch.no_grad():
                for batch in batches:
                    self.model(**batch)
        finally:
            for h in handles:
                h.remove()
        return {name: torch.cat(zs) for name, zs in self.z.items()}


def assert_oracle(report: Report, z: dict[str, Tensor]) -> None:
    """The report's statistics at every oracle site are those of the oracle's z."""
    for site, zs in z.items():
        s = report.stats[site]
        assert float(zs.abs().min()) > 1e-6, "precondition: no z within rounding of 0"
        assert int(s.positions) == zs.shape[0], site
        assert s.active.tolist() == (zs > 0).sum(0).tolist(), site
        partial = [a for a in s.active.tolist() if 0 < a < zs.shape[0]]
        assert partial, f"{site}: some unit must be active on some tokens only"
        torch.testing.assert_close(s.z_max, zs.amax(0), rtol=1e-9, atol=0)
        torch.testing.assert_close(s.z_min, zs.amin(0), rtol=1e-9, atol=0)
        torch.testing.assert_close(s.z_sum, zs.sum(0), rtol=1e-9, atol=1e-9)
        assert report.dead_units(site) == torch.nonzero((zs > 0).sum(0) == 0).flatten().tolist()


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", sorted(DECODERS))
def test_padded_batches_equal_each_sequence_alone(arch: str, side: str) -> None:
    """Masked scans of right- and left-padded batches give, at every FFN site (all of
    them masked, none reported unmasked, no warning), the statistics of each sequence
    run alone without padding."""
    make, sites = DECODERS[arch]
    model = build(make)
    seqs = sequences(LENGTHS, seed=0)
    z = Oracle(model, sites).run([{"input_ids": s[None]} for s in seqs])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = scan(model, lm_batches(seqs, side), detail="full")
    assert no_hooks_left(model)
    assert sorted(got.stats) == sorted(sites)
    assert sorted(got.meta["masked_sites"]) == sorted(sites)
    assert got.meta["unmasked_sites"] == []
    assert got.meta["tokens"] == sum(LENGTHS)
    assert_oracle(got, z)


def decode_step(model: nn.Module) -> dict[str, Any]:
    """A generation step after a left-padded prompt batch: 2 new tokens per sequence over
    a KV cache, the mask covering the cached tokens and then the new ones (Hugging Face's
    convention), the new tokens of rows 1 and 3 partly padding. A fresh cache per call
    (a forward appends to it)."""
    prompt = lm_batches(sequences(LENGTHS, seed=0), "left")[1]  # 4 rows, width 6
    with torch.no_grad():
        cache = model(**prompt, use_cache=True).past_key_values
    new_mask = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 0]])
    positions = prompt["position_ids"][:, -1:] + 1 + torch.arange(2)
    return {
        "input_ids": torch.randint(3, VOCAB, (4, 2), generator=torch.Generator().manual_seed(5)),
        "attention_mask": torch.cat([prompt["attention_mask"], new_mask], 1),
        "position_ids": positions,
        "cache": cache,
        "use_cache": True,
    }


def test_generation_step_with_a_cache() -> None:
    """A KV-cache step (mask wider than input_ids by the cached tokens): its last columns
    mask the new tokens; the scan counts and keeps those only (oracle: hooks over the
    same step, z of the new tokens whose mask is 1)."""
    make, sites = DECODERS["gpt2"]
    model = build(make)
    step = decode_step(model)
    keep = step["attention_mask"][:, -2:].bool()
    z = {site: zs.reshape(4, 2, -1)[keep] for site, zs in Oracle(model, sites).run([step]).items()}
    got = scan(model, [decode_step(model)], detail="full")
    assert got.meta["tokens"] == int(keep.sum()) == 5
    assert sorted(got.meta["masked_sites"]) == sorted(sites)
    assert got.meta["unmasked_sites"] == []
    for site, zs in z.items():
        s = got.stats[site]
        assert int(s.positions) == 5
        assert s.active.tolist() == (zs > 0).sum(0).tolist()
        torch.testing.assert_close(s.z_max, zs.amax(0), rtol=1e-9, atol=0)
        torch.testing.assert_close(s.z_sum, zs.sum(0), rtol=1e-9, atol=1e-9)


def enc_dec_batches(
    enc: list[Tensor], dec: list[Tensor], decoder_mask: bool
) -> list[dict[str, Tensor]]:
    """Right-padded batches of 2 and 4 (encoder and decoder sequences both padded to the
    width 7), with the decoder's mask when ``decoder_mask``."""
    out = []
    for rows in (slice(0, 2), slice(2, None)):
        ids, mask = pad(enc[rows], "right", width=7)
        dec_ids, dec_mask = pad(dec[rows], "right", width=7)
        batch = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec_ids}
        if decoder_mask:
            batch["decoder_attention_mask"] = dec_mask
        out.append(batch)
    return out


def pairs_alone(enc: list[Tensor], dec: list[Tensor]) -> list[dict[str, Tensor]]:
    """Each (encoder, decoder) pair of sequences alone: unpadded, without masks."""
    return [
        {"input_ids": e[None], "decoder_input_ids": d[None]} for e, d in zip(enc, dec, strict=True)
    ]


@pytest.mark.parametrize("arch", sorted(ENC_DEC))
def test_encoder_decoder_each_part_takes_its_own_mask(arch: str) -> None:
    """Encoder and decoder sequences padded to the same width (so the encoder's mask lines
    up with the decoder's activations by shape): with ``decoder_attention_mask`` the
    encoder's sites equal the encoder sequences alone and the decoder's the decoder
    sequences alone; without it the decoder's sites are scanned whole (every position
    of the padded decoder batch, as an oracle over that forward sees them), reported in
    unmasked_sites with a warning, never restricted by the encoder's mask."""
    make, enc_sites, dec_sites = ENC_DEC[arch]
    model = build(make)
    enc, dec = sequences(LENGTHS, seed=1), sequences(DEC_LENGTHS, seed=2)
    z = Oracle(model, enc_sites + dec_sites).run(pairs_alone(enc, dec))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = scan(model, enc_dec_batches(enc, dec, decoder_mask=True), detail="full")
    assert sorted(got.stats) == sorted(enc_sites + dec_sites)
    assert sorted(got.meta["masked_sites"]) == sorted(enc_sites + dec_sites)
    assert got.meta["unmasked_sites"] == []
    assert got.meta["tokens"] == sum(LENGTHS)  # the encoder's tokens
    assert_oracle(got, z)

    batches = enc_dec_batches(enc, dec, decoder_mask=False)
    whole = Oracle(model, dec_sites).run(batches)  # every decoder position, padding too
    with pytest.warns(UserWarning, match="include padding positions, if any: .*decoder") as caught:
        bare = scan(model, batches, detail="full")
    assert "'decoder_attention_mask'" in str(caught[0].message)
    assert sorted(bare.meta["masked_sites"]) == sorted(enc_sites)
    assert sorted(bare.meta["unmasked_sites"]) == sorted(dec_sites)
    assert_oracle(bare, {site: z[site] for site in enc_sites})
    for site in dec_sites:
        assert int(bare.stats[site].positions) == whole[site].shape[0] == 2 * 7 + 4 * 7
        assert bare.stats[site].active.tolist() == (whole[site] > 0).sum(0).tolist()


@pytest.mark.parametrize("arch", sorted(ENC_DEC))
def test_decoder_mask_alone(arch: str) -> None:
    """Batches with a decoder mask but no encoder mask (unpadded encoder inputs, as for
    Whisper's features): the decoder's sites equal the decoder sequences alone; the
    encoder's, with no mask of their own, are scanned whole and reported. An unpadded
    encoder mask without a decoder mask still warns: the decoder's padding is unknown."""
    make, enc_sites, dec_sites = ENC_DEC[arch]
    model = build(make)
    enc, dec = sequences((7,) * len(DEC_LENGTHS), seed=1), sequences(DEC_LENGTHS, seed=2)
    z = Oracle(model, enc_sites + dec_sites).run(pairs_alone(enc, dec))
    batches = enc_dec_batches(enc, dec, decoder_mask=True)
    for b in batches:
        assert bool(b.pop("attention_mask").all())
    with pytest.warns(UserWarning, match="include padding positions, if any: .*encoder"):
        got = scan(model, batches, detail="full")
    assert sorted(got.meta["masked_sites"]) == sorted(dec_sites)
    assert sorted(got.meta["unmasked_sites"]) == sorted(enc_sites)
    assert got.meta["mask"] == "decoder_attention_mask"
    assert_oracle(got, z)  # the encoder has no padding: whole is right there
    # an unpadded encoder mask and no decoder mask: the decoder's padding is unknown
    for batch in batches:
        batch["attention_mask"] = torch.ones_like(batch.pop("decoder_attention_mask"))
    with pytest.warns(UserWarning, match="no 'decoder_attention_mask'"):
        bare = scan(model, batches)
    assert sorted(bare.meta["unmasked_sites"]) == sorted(dec_sites)


class Wrapped(nn.Module):
    """A user's wrapper around a Hugging Face encoder-decoder (no get_encoder of its own)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, **batch: Tensor) -> Any:
        return self.net(**batch)


def test_wrapped_encoder_decoder_found_inside() -> None:
    """The encoder and decoder are found inside a wrapper: the same statistics as the
    bare model's, under the wrapper's names."""
    model = build(ENC_DEC["t5"][0])
    enc, dec = sequences(LENGTHS, seed=1), sequences(DEC_LENGTHS, seed=2)
    batches = enc_dec_batches(enc, dec, decoder_mask=True)
    ref = scan(model, batches, detail="full")
    got = scan(Wrapped(model), batches, detail="full")
    assert got.meta["masked_sites"] == [f"net.{s}" for s in ref.meta["masked_sites"]]
    assert got.meta["unmasked_sites"] == []
    for site in ENC_DEC["t5"][2]:  # the decoder's real tokens, not the encoder's
        assert int(got.stats[f"net.{site}"].positions) == sum(DEC_LENGTHS) != sum(LENGTHS)
    for site, s in ref.stats.items():
        assert torch.equal(got.stats[f"net.{site}"].active, s.active)
        assert torch.equal(got.stats[f"net.{site}"].positions, s.positions)


class ToySeq2Seq(nn.Module):
    """An encoder-decoder of its own (no get_encoder/get_decoder): position-wise FFNs on
    the encoder ids and on the decoder ids, each ``(B, T, 12)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 8)
        self.enc_fc, self.dec_fc = nn.Linear(8, 12), nn.Linear(8, 12)
        self.enc_act, self.dec_act = nn.ReLU(), nn.ReLU()

    def forward(self, input_ids: Tensor, decoder_input_ids: Tensor, **_: Tensor) -> Tensor:
        e = self.enc_act(self.enc_fc(self.embed(input_ids)))
        d = self.dec_act(self.dec_fc(self.embed(decoder_input_ids)))
        return e.sum(1) + d.sum(1)


def test_unknown_encoder_decoder_is_not_masked() -> None:
    """A model whose encoder and decoder cannot be found, fed a batch with a second
    sequence (``decoder_*`` keys): no site is restricted (which mask belongs to which is
    unknown); both are reported, with a warning, and hold every position."""
    model = ToySeq2Seq()
    enc, dec = sequences(LENGTHS, seed=1), sequences(DEC_LENGTHS, seed=2)
    batches = enc_dec_batches(enc, dec, decoder_mask=False)
    with pytest.warns(UserWarning, match="include padding positions"):
        got = scan(model, batches)
    assert got.meta["masked_sites"] == []
    assert got.meta["unmasked_sites"] == ["enc_act", "dec_act"]
    assert all(int(s.positions) == 6 * 7 for s in got.stats.values())
    assert got.meta["tokens"] == sum(LENGTHS)


class DeclaredSeq2Seq(nn.Module):
    """An encoder-decoder of its own that names its parts as Hugging Face's do
    (``get_encoder``, ``get_decoder``): position-wise ``Linear -> ReLU`` on each."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 8)
        self.encoder = nn.Sequential(nn.Linear(8, 12), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(8, 12), nn.ReLU())

    def get_encoder(self) -> nn.Module:
        return self.encoder

    def get_decoder(self) -> nn.Module:
        return self.decoder

    def forward(self, input_ids: Tensor, decoder_input_ids: Tensor, **_: Tensor) -> Tensor:
        e = self.encoder(self.embed(input_ids))
        return e.sum(1) + self.decoder(self.embed(decoder_input_ids)).sum(1)


def test_declared_encoder_decoder_takes_each_mask() -> None:
    """A model of its own with get_encoder/get_decoder: the encoder's ReLU holds the
    encoder's real tokens, the decoder's the decoder's (oracle: the Linear of each on
    the real tokens' embeddings, computed here)."""
    model = DeclaredSeq2Seq()
    enc, dec = sequences(LENGTHS, seed=1), sequences(DEC_LENGTHS, seed=2)
    got = scan(model, enc_dec_batches(enc, dec, decoder_mask=True))
    assert got.meta["masked_sites"] == ["encoder.1", "decoder.1"]
    assert got.meta["unmasked_sites"] == []
    with torch.no_grad():
        for site, part, seqs in (
            ("encoder.1", model.encoder, enc),
            ("decoder.1", model.decoder, dec),
        ):
            z = part[0](model.embed(torch.cat(seqs)))
            assert int(got.stats[site].positions) == z.shape[0]
            assert got.stats[site].active.tolist() == (z > 0).sum(0).tolist()


@pytest.mark.filterwarnings("ignore::deadrelu.capture.UnrecognisedActivationWarning")
def test_mixture_of_experts_routed_sites_are_not_masked() -> None:
    """A top-1 Qwen2-MoE: its routed experts' activations are ``(B * T, U)``, the shape
    of the flattened mask, but their rows are the tokens grouped by expert (Hugging
    Face's grouped experts sort them so), not in token order: the scan leaves them whole
    (every position, padding too: as mask=False and an oracle over the same forward) and
    reports them, with a warning. Its shared expert runs on every token in order: masked
    (the oracle's rows whose mask is 1). Float32 (grouped_mm has no float64)."""
    torch.manual_seed(0)
    cfg = transformers.Qwen2MoeConfig(
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_experts=2,
        num_experts_per_tok=1,
        **SMALL,
    )
    model = transformers.Qwen2MoeForCausalLM(cfg).eval()
    experts, shared = "model.layers.0.mlp.experts.act_fn", "model.layers.0.mlp.shared_expert.act_fn"
    batches = lm_batches(sequences(LENGTHS, seed=3), "right")
    z = Oracle(model, [experts, shared]).run(batches)
    positions = sum(b["input_ids"].numel() for b in batches)
    assert z[experts].shape[0] == z[shared].shape[0] == positions  # the (B*T, U) shape
    keep = torch.cat([b["attention_mask"].reshape(-1) for b in batches]).bool()
    with pytest.warns(UserWarning, match="mixture-of-experts"):
        got = scan(model, batches, detail="full")
    assert got.meta["masked_sites"] == [shared] and got.meta["unmasked_sites"] == [experts]
    ref = scan(model, batches, detail="full", mask=False)
    assert int(got.stats[experts].positions) == positions
    assert torch.equal(got.stats[experts].active, ref.stats[experts].active)
    assert got.stats[experts].active.tolist() == (z[experts] > 0).sum(0).tolist()
    assert int(got.stats[shared].positions) == sum(LENGTHS)
    assert got.stats[shared].active.tolist() == (z[shared][keep] > 0).sum(0).tolist()


def test_multimodal_mask_restricts_the_language_model_only() -> None:
    """A tiny LLaVA whose vision tower's activations ``(B, 5, U)`` (4 patches and CLS)
    line up with the text mask ``(B, 5)`` by shape: only the language model's sites are
    restricted (oracle: hooks over the same forward, rows whose mask is 1); the vision
    tower and the projector are scanned whole (every patch of every image) and reported."""
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=8,
        patch_size=4,
    )
    text = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        **SMALL,
    )
    cfg = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=VOCAB - 1, vision_feature_layer=-1
    )
    model = transformers.LlavaForConditionalGeneration(cfg).double().eval()
    lm = "model.language_model.layers.0.mlp.act_fn"
    tower = "model.vision_tower.encoder.layers.0.mlp.activation_fn"
    projector = "model.multi_modal_projector.act"
    ids = torch.cat([torch.full((2, 4), VOCAB - 1), torch.tensor([[5], [6]])], 1)  # (2, 5)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    pixels = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}
    z = Oracle(model, [lm, tower, projector]).run([batch])
    with pytest.warns(UserWarning, match="include padding positions"):
        got = scan(model, [batch], detail="full")
    assert got.meta["masked_sites"] == [lm]
    assert sorted(got.meta["unmasked_sites"]) == sorted([tower, projector])
    assert z[tower].shape[0] == 2 * 5 and z[projector].shape[0] == 2 * 4
    z[lm] = z[lm][mask.reshape(-1).bool()]
    for site, zs in z.items():
        s = got.stats[site]
        assert int(s.positions) == zs.shape[0]
        assert s.active.tolist() == (zs > 0).sum(0).tolist()
        torch.testing.assert_close(s.z_sum, zs.sum(0), rtol=1e-9, atol=1e-9)


def test_square_batches_of_a_sequence_first_model_are_not_masked() -> None:
    """FSMT runs its layers sequence-first: its FFN activations are ``(T, B, U)``. A
    padded batch with B == T lines up with the mask by shape but not by position: its
    sites are scanned whole (as mask=False) and reported; so are a batch-first model's
    on such a batch (GPT-2: which layout it is cannot be told from the shape). Unpadded
    square batches exclude nothing either way, so they are masked (a no-op)."""
    cfg = transformers.FSMTConfig(
        src_vocab_size=VOCAB,
        tgt_vocab_size=VOCAB,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        langs=["en", "de"],
        max_position_embeddings=32,
        pad_token_id=0,
        decoder_start_token_id=2,
    )
    fsmt = build(lambda: transformers.FSMTForConditionalGeneration(cfg))
    encoder = "model.encoder.layers.0.activation_fn"
    ids, mask = pad(sequences((4, 2, 3, 4), seed=4), "right")  # (4, 4)
    square = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": ids}
    z = Oracle(fsmt, [encoder]).run([square])[encoder]
    with pytest.warns(UserWarning, match="batch == tokens"):
        got = scan(fsmt, [square])
    assert encoder in got.meta["unmasked_sites"] and encoder not in got.meta["masked_sites"]
    assert int(got.stats[encoder].positions) == 16
    assert got.stats[encoder].active.tolist() == (z > 0).sum(0).tolist()
    full = {**square, "attention_mask": torch.ones_like(mask)}
    assert scan(fsmt, [full]).meta["masked_sites"][0] == encoder

    gpt2 = build(DECODERS["gpt2"][0])
    with pytest.warns(UserWarning, match="batch == tokens"):
        got = scan(gpt2, [{"input_ids": ids, "attention_mask": mask}])
    assert got.meta["masked_sites"] == [] and len(got.meta["unmasked_sites"]) == 2
