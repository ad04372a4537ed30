"""deadrelu.sources: model and data specs, checkpoints read without running code."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import random
import sys
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deadrelu import sources
from deadrelu.scan import scan
from deadrelu.sources import LoadedModel, SpecError, load_data, load_model, read_state_dict
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


# ---------------------------------------------------------------------- streamed text corpora

_SENTENCES = [
    "the cat sat on the mat.",
    "a dog ran in the park!",
    "dead units never fire",
    "Hello  world\n\n\nagain   \n x",
    "it's 12345 o'clock\t(é)",
]
#: cl100k-style pre-tokenizer: newline runs are one token (``\s*[\r\n]+``).
_CL100K = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _tokenizer(kind: str, directory: Path, corpus: str = "") -> Any:
    """A tiny tokenizer trained here (nothing downloaded), wrapped in
    PreTrainedTokenizerFast, saved to ``directory`` and read back as an ``hf:`` model's is.

    * ``bytelevel``: GPT-2's byte-level BPE (newline runs merged), BOS ``<s>`` added,
      eos ``</s>``;
    * ``cl100k``: byte-level BPE with cl100k's split pattern, no BOS, eos ``<|eot|>``;
    * ``metaspace``: SentencePiece-like BPE (``▁`` prepended to the text's first word only),
      ``<s> $A </s>``;
    * ``opt``: byte-level BPE framed ``</s> $A`` with bos = eos = ``</s>`` (as OPT);
    * ``wordlevel``: whitespace words, no special tokens, no eos;
    * ``spanning``: words split at spaces only, so a token may span a line end
      (``"cat\\nsat"``), its vocabulary trained on ``corpus``: most line ends are no
      place to cut.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors, trainers

    transformers = pytest.importorskip("transformers")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    names: dict[str, str] = {}
    if kind in ("wordlevel", "spanning"):
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        if kind == "wordlevel":
            tok.pre_tokenizer = pre_tokenizers.Whitespace()
        else:
            tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")
        texts = [corpus] if kind == "spanning" else _SENTENCES
        tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
        names = {"unk_token": "[UNK]"}
    elif kind == "metaspace":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        specials = ["<unk>", "<s>", "</s>"]
        tok.train_from_iterator(_SENTENCES, trainers.BpeTrainer(special_tokens=specials))
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
        )
        names = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    else:
        tok = Tokenizer(models.BPE())
        if kind == "cl100k":
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(_CL100K), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        specials = ["<|eot|>"] if kind == "cl100k" else ["<s>", "</s>"]
        trainer = trainers.BpeTrainer(
            vocab_size=300, special_tokens=specials, initial_alphabet=alphabet
        )
        tok.train_from_iterator(_SENTENCES, trainer)
        if kind == "bytelevel":
            tok.post_processor = processors.TemplateProcessing(
                single="<s> $A", special_tokens=[("<s>", 0)]
            )
            names = {"bos_token": "<s>", "eos_token": "</s>"}
        elif kind == "opt":
            tok.post_processor = processors.TemplateProcessing(
                single="</s> $A", special_tokens=[("</s>", 1)]
            )
            names = {"bos_token": "</s>", "eos_token": "</s>"}
        else:
            names = {"eos_token": "<|eot|>"}
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **names)
    fast.save_pretrained(directory)
    return transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)


def _hf(tokenizer: Any) -> LoadedModel:
    return LoadedModel(torch.nn.Identity(), "hf:tiny", "hf", tokenizer=tokenizer)


def _messy_text(n: int, seed: int = 0) -> str:
    """Words, blank-line runs, trailing spaces, tabs, digits, CRLF and accents at random:
    the places where cutting a text at a line end can change its tokens."""
    rng = random.Random(seed)
    pieces = ["the", "cat", "sat", " ", "  ", "\n", "\n\n", "\n\n\n", "dog", "12345", "!"]
    pieces += ["it's", "  \n", "\t", "é", "park.", "\r\n", " \n \n"]
    return "".join(rng.choice(pieces) for _ in range(n))


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, verbose=False)["input_ids"])


def _windows(batches: Iterable[Any]) -> tuple[list[int], list[int]]:
    """All the token ids of the batches, in order, and the windows per batch."""
    ids: list[int] = []
    rows = []
    for b in batches:
        assert torch.equal(b["attention_mask"], torch.ones_like(b["input_ids"]))
        ids += b["input_ids"].reshape(-1).tolist()
        rows.append(int(b["input_ids"].shape[0]))
    return ids, rows


@pytest.mark.parametrize("kind", ["bytelevel", "cl100k", "metaspace", "wordlevel", "spanning"])
def test_text_file_streamed_in_chunks_equals_tokenising_it_whole(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is read 64 characters at a time (many chunk borders, at blank-line runs and
    trailing spaces too), yet the windows are exactly those of tokenising the whole file
    at once; the count of windows and batches is exact. The lossless (byte-level,
    byte-fallback) tokenizers find every cut stable; for the one whose tokens span line
    ends and the word-level one ([UNK] ids stand for any text) cuts are found unstable
    and dropped, yet the ids are the same."""
    text = _messy_text(3000)
    if kind == "spanning":  # some lines start with a space: there a cut is stable
        text = text.replace("\n", "\n ", 40)
    tok = _tokenizer(kind, tmp_path / "tok", text.replace("\r\n", "\n"))
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    whole = _ids(tok, path.read_text(encoding="utf-8"))
    monkeypatch.setattr(sources, "TEXT_CHUNK_CHARS", 64)
    unstable = [0]
    real_pieces = sources._pieces

    def pieces(*args: Any) -> Any:
        out = real_pieces(*args)
        unstable[0] += len(out[1])
        return out

    monkeypatch.setattr(sources, "_pieces", pieces)
    assert len(list(sources.corpus_ids(tok, [path]))) > 10  # it was cut, many times
    assert (unstable[0] > 0) == (kind in ("spanning", "wordlevel"))  # [UNK]s: lossy
    if kind != "wordlevel":  # cutting at line ends naively would change the ids
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        naive = [i for k in range(0, len(lines), 5) for i in _ids(tok, "".join(lines[k : k + 5]))]
        assert naive != whole

    data = load_data(str(path), _hf(tok), batches=10**9, batch_size=3, seq_len=5)
    ids, rows = _windows(data)
    n = len(whole) // 5
    assert ids == whole[: n * 5]
    assert rows == [3] * (n // 3) + ([n % 3] if n % 3 else [])
    # --batches bounds the stream: the first two batches, the same windows
    ids2, rows2 = _windows(load_data(str(path), _hf(tok), batches=2, batch_size=3, seq_len=5))
    assert rows2 == [3, 3] and ids2 == whole[:30]


@pytest.mark.parametrize("kind", ["bytelevel", "opt", "wordlevel"])
def test_jsonl_and_folder_corpora_are_documents_joined_by_eos(kind: str, tmp_path: Path) -> None:
    """A folder of .txt/.jsonl/.txt.gz files in sorted order (hidden and other files
    skipped); each file or record is a document tokenised whole, the tokenizer's eos
    between two: none for OPT (its BOS is the eos) nor for a tokenizer without eos."""
    tok = _tokenizer(kind, tmp_path / "tok")
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    docs = ["the cat sat\non the mat\n", "a dog ran", "in the park!", "dead units\n\nnever fire"]
    (corpus / "a.txt").write_text(docs[0])
    records = [{"text": docs[1]}, {"text": ""}, {"text": docs[2], "id": 7}]
    (corpus / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    with gzip.open(corpus / "sub" / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write(docs[3])
    (corpus / ".hidden.txt").write_text("it's 12345")
    (corpus / "notes.md").write_text("it's 12345")
    sep = {"bytelevel": [tok.eos_token_id], "opt": [], "wordlevel": []}[kind]
    expected = _ids(tok, docs[0])
    for d in docs[1:]:
        expected += sep + _ids(tok, d)
    if kind == "opt":
        assert expected.count(tok.eos_token_id) == 4  # each document's </s> BOS, no more
    data = load_data(str(corpus), _hf(tok), batches=10**9, batch_size=2, seq_len=3)
    ids, rows = _windows(data)
    assert ids == expected[: len(expected) // 3 * 3]
    assert sum(rows) == len(expected) // 3

    jsonl = corpus / "b.jsonl"  # one .jsonl file alone: its two non-empty records
    ids, _ = _windows(load_data(str(jsonl), _hf(tok), batches=10**9, batch_size=1, seq_len=1))
    assert ids == _ids(tok, docs[1]) + sep + _ids(tok, docs[2])


class _CountingFile:
    """A text file that counts the lines taken from it."""

    def __init__(self, f: Any, counter: list[int]) -> None:
        self.f, self.counter = f, counter

    def __iter__(self) -> _CountingFile:
        return self

    def __next__(self) -> str:
        line = next(self.f)
        self.counter[0] += 1
        return line

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def test_text_source_is_lazy_and_reads_no_more_than_a_chunk_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5000 lines of 6 words (23 characters): nothing is read before the first batch is
    taken, and after k batches of 2 x 8 tokens at most the lines those 16 k tokens need
    plus one chunk (100 characters: 5 lines) and the line carried over were read."""
    tok = _tokenizer("wordlevel", tmp_path / "tok")
    path = tmp_path / "big.txt"
    path.write_text("the cat sat on the mat\n" * 5000)
    read = [0]
    real = sources._open_text
    monkeypatch.setattr(sources, "_open_text", lambda p: _CountingFile(real(p), read))
    monkeypatch.setattr(sources, "TEXT_CHUNK_CHARS", 100)
    data = load_data(str(path), _hf(tok), batches=10**9, batch_size=2, seq_len=8)
    assert isinstance(data, Iterator) and not hasattr(data, "__len__")
    assert read[0] == 0
    for k, batch in enumerate(itertools.islice(data, 200), 1):
        assert batch["input_ids"].shape == (2, 8)
        assert read[0] <= math.ceil(16 * k / 6) + 6, (k, read[0])
    assert read[0] >= 16 * 200 / 6


def test_text_corpus_errors_and_a_stream_shorter_than_a_window(tmp_path: Path) -> None:
    tok = _tokenizer("bytelevel", tmp_path / "tok")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the cat"}\n{"text": 3}\n')
    batches = load_data(str(bad), _hf(tok), seq_len=1)
    with pytest.raises(SpecError, match=r"line 2 has no string field 'text'"):
        list(batches)
    bad.write_text('{"text": "the cat"}\nnot json\n')
    with pytest.raises(SpecError, match=r"line 2 is not JSON"):
        list(load_data(str(bad), _hf(tok), seq_len=1))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SpecError, match="gives no tokens"):
        list(load_data(str(empty), _hf(tok)))
    short = tmp_path / "short.txt"
    short.write_text("the cat")
    (batch,) = load_data(str(short), _hf(tok), seq_len=100)
    assert batch["input_ids"].tolist() == [_ids(tok, "the cat")]
