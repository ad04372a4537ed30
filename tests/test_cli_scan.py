"""``deadrelu scan / explain / certify`` on models named by a spec, with dead units by construction.

Ground truth: in the ResNet-18 checkpoint every convolution weight is 0 and every
BatchNorm bias +1 (eval-mode BN with fresh running statistics is then z = bias at every
position), except the biases set to -1000: exactly those units are dead, whatever the
input. The tiny OPT has fc1 biases +10 (|w . x| is far below 10 at init) except the ones
set to -1000. ``tests/models.py`` gives the MLPs (bias -1000 = dead, the others bounded
alive on [-1, 1]).

The CLI runs in-process (``main(argv)``) for speed; one test runs the installed script.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from deadrelu import scan_command
from deadrelu.cli import main
from deadrelu.report import Report
from deadrelu.zoo import import_torchvision
from models import OPT_DEAD, DeadMLP, tiny_opt

RESNET_DEAD = {"relu": [1, 5], "layer2.0.relu": [0, 7, 100]}


def _dead_from_json(path: Path) -> dict[str, list[int]]:
    data = json.loads(path.read_text())
    return {s["name"]: s["units"]["dead"] for s in data["sites"] if s["units"]["dead"]}


@pytest.fixture(scope="module")
def resnet_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tv = import_torchvision()
    sd = tv.models.resnet18().state_dict()
    for name, t in sd.items():
        if name.endswith(".weight") and t.dim() == 4:
            t.zero_()
        if name.endswith(".bias") and (
            ".bn" in name or name.startswith("bn") or "downsample.1" in name
        ):
            t.fill_(1.0)
    for site, units in RESNET_DEAD.items():
        bn = "bn1.bias" if site == "relu" else site.replace(".relu", ".bn1.bias")
        sd[bn][units] = -1000.0
    path = tmp_path_factory.mktemp("resnet") / "killed.pt"
    torch.save(sd, path)
    return path


def test_resnet18_checkpoint_reports_exactly_the_killed_units(
    resnet_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    argv = ["scan", "torchvision:resnet18", "--weights", str(resnet_ckpt)]
    argv += ["--data", "random:3x64x64", "--batches", "1", "--batch-size", "2"]
    assert main([*argv, "--json", str(out)]) == 0
    assert _dead_from_json(out) == RESNET_DEAD
    printed = capsys.readouterr().out
    assert "layer2.0.relu" in printed and "layer4.1.relu#1" in printed  # full names

    assert main([*argv, "--fail-on", "dead>0"]) == 1
    err = capsys.readouterr().err
    assert "dead>0" in err and "5/3904" in err
    assert main([*argv, "--fail-on", "dead>50%"]) == 0
    # per site: 3/128 = 2.3 % in layer2.0.relu; 2/64 = 3.1 % in the stem
    assert main([*argv, "--fail-on", "layer2.0.relu:dead>2%"]) == 1
    assert main([*argv, "--fail-on", "layer2.0.relu:dead>3%"]) == 0
    assert main([*argv, "--fail-on", "layer3.*:dead>0,dormant>=6"]) == 0  # 5 dormant
    assert main([*argv, "--fail-on", "dormant>=5"]) == 1


def test_weights_only_checkpoint_as_the_model_with_arch(resnet_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    argv = ["scan", str(resnet_ckpt), "--arch", "torchvision:resnet18", "--data", "random:3x32x32"]
    assert main([*argv, "--batches", "1", "--batch-size", "1", "--json", str(out)]) == 0
    assert _dead_from_json(out) == RESNET_DEAD


def test_checkpoint_without_arch_says_to_pass_it(
    resnet_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", str(resnet_ckpt)]) == 2
    err = capsys.readouterr().err
    assert "--arch" in err and err.count("\n") == 1


def test_pickled_full_model_is_refused_without_trust_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "full.pt"
    torch.save(DeadMLP(), path)
    argv = ["scan", str(path), "--data", "random:8", "--batches", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--trust-pickle" in err and "runs code" in err and err.count("\n") == 1
    out = tmp_path / "out.json"
    assert main([*argv, "--trust-pickle", "--json", str(out)]) == 0
    assert _dead_from_json(out) == DeadMLP().expected_dead


def test_fail_on_bad_expression_and_unknown_site(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["scan", "models:DeadMLP", "--data", "random:8", "--batches", "1"]
    assert main([*base, "--fail-on", "deadish>5"]) == 2
    err = capsys.readouterr().err
    assert "'deadish>5'" in err and "KIND>N%" in err and "dormant" in err
    assert main([*base, "--fail-on", "nope:dead>0"]) == 2
    assert "no site 'nope'" in capsys.readouterr().err
    assert main([*base, "--fail-on", "relu1:dead>=2"]) == 1  # units 1 and 4
    assert main([*base, "--fail-on", "relu1:dead>2"]) == 0


def test_bad_model_spec_is_one_line_naming_the_forms(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "'resnet18'" in err and "torchvision:NAME" in err and "hf:DIR" in err
    assert err.count("\n") == 1
    assert main(["scan", "models:DeadMLP", "--data", "random:3xfoo"]) == 2
    assert "random:3x224x224" in capsys.readouterr().err


def test_missing_optional_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    assert main(["scan", "timm:convnext_atto"]) == 2
    assert "deadrelu[zoo]" in capsys.readouterr().err


# ---------------------------------------------------------------------- Hugging Face


def _tiny_tokenizer(transformers: object) -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    lines = ["the cat sat on the mat", "a dog ran in the park", "dead units never fire"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(lines, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    return transformers.PreTrainedTokenizerFast(  # type: ignore[attr-defined]
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]"
    )


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import_torchvision()
    transformers = pytest.importorskip("transformers")
    model = tiny_opt(transformers)
    d = tmp_path_factory.mktemp("hf") / "opt"
    model.save_pretrained(d)
    _tiny_tokenizer(transformers).save_pretrained(d)  # type: ignore[attr-defined]
    return d


def test_hf_directory_with_a_text_file(opt_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat and a dog ran in the park\n" * 8)
    out = tmp_path / "out.json"
    argv = ["scan", f"hf:{opt_dir}", "--data", str(text), "--seq-len", "8"]
    assert main([*argv, "--batch-size", "2", "--batches", "2", "--json", str(out)]) == 0
    assert _dead_from_json(out) == OPT_DEAD
    data = json.loads(out.read_text())
    assert data["meta"]["batches"] == 2
    # random token ids (no --data) need no tokenizer and find the same units
    assert (
        main(["scan", f"hf:{opt_dir}", "--seq-len", "8", "--batches", "1", "--json", str(out)]) == 0
    )
    assert _dead_from_json(out) == OPT_DEAD


def test_hf_directory_without_tokenizer_gives_a_clear_error(
    opt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in opt_dir.iterdir():
        if not f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, bare / f.name)
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat\n")
    assert main(["scan", f"hf:{bare}", "--data", str(text)]) == 2
    err = capsys.readouterr().err
    assert "has no tokenizer" in err and "save_pretrained" in err


def test_hf_spec_that_is_not_a_model_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", f"hf:{tmp_path}"]) == 2
    assert "config.json" in capsys.readouterr().err


# ---------------------------------------------------------------------- explain, certify


def test_explain_gives_a_cause_per_dead_unit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "expl.json"
    argv = ["explain", "models:DeadMLP", "--data", "random:8", "--batches", "2", "--json", str(out)]
    assert main(argv) == 0
    units = {(u["site"], u["unit"]) for u in json.loads(out.read_text())["units"]}
    assert units == {("relu1", 1), ("relu1", 4), ("relu2", 7)}
    assert "3 dead unit(s)" in capsys.readouterr().out


def test_certify_box_bounds_and_data(tmp_path: Path) -> None:
    out = tmp_path / "cert.json"
    argv = ["certify", "models:DeadMLP", "--box=-1,1", "--input-shape", "8", "--json", str(out)]
    assert main(argv) == 0
    sites = json.loads(out.read_text())["sites"]
    assert {k: v["certified_dead"] for k, v in sites.items()} == DeadMLP().expected_dead
    x = torch.rand(64, 8) * 2 - 1
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "x.npy", x.numpy())
    argv = ["certify", "models:DeadMLP", "--box", "data", "--data", str(tmp_path / "x.npy")]
    assert main([*argv, "--json", str(out)]) == 0
    cert = json.loads(out.read_text())
    assert cert["box"]["lower"]["shape"] == [8]
    assert {k: v["certified_dead"] for k, v in cert["sites"].items()} == DeadMLP().expected_dead


def test_certify_bad_box(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certify", "models:DeadMLP", "--box", "1"]) == 2
    assert "LO,HI" in capsys.readouterr().err


# ---------------------------------------------------------------------- the installed script


def test_installed_script_imports_a_factory_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "mynet.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def build():
                fc = nn.Linear(4, 6)
                with torch.no_grad():
                    fc.weight.zero_()
                    fc.bias.copy_(torch.tensor([1.0, -1000.0, 1.0, 1.0, -1000.0, 1.0]))
                return nn.Sequential(fc, nn.ReLU())
            """
        )
    )
    script = Path(sys.executable).parent / "deadrelu"
    cmd = [str(script) if script.exists() else "deadrelu", "scan", "mynet:build"]
    cmd += ["--data", "random:4", "--batches", "1", "--fail-on", "dead>=2", "--json", "r.json"]
    env = {**os.environ, "COLUMNS": "200"}
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 1, run.stderr
    assert "dead>=2" in run.stderr
    assert _dead_from_json(tmp_path / "r.json") == {"1": [1, 4]}


# ---------------------------------------------------------------------- the README's commands


def _readme_commands() -> list[str]:
    import re

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start = text.index("## Use it from the command line")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = re.findall(r"^```bash\n(.*?)^```", section, re.M | re.S)
    return [line for b in blocks for line in b.splitlines() if line.startswith("deadrelu ")]


def test_readme_commands_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shlex

    commands = _readme_commands()
    assert len(commands) >= 3
    monkeypatch.chdir(tmp_path)
    for line in commands:
        assert main(shlex.split(line)[1:]) == 0, (line, capsys.readouterr().err)
    assert json.loads((tmp_path / "scan.json").read_text())["summary"]["units"] == 3904
    page = (tmp_path / "scan.html").read_text()
    assert "layer4.1.relu#1" in page and 'id="causes"' in page


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_scan_dtype_finds_the_killed_units(tmp_path: Path, dtype: str) -> None:
    """--dtype casts the model and the random data; the units killed by construction
    (bias -1000) are found exactly in either dtype."""
    out = tmp_path / "scan.json"
    argv = ["scan", "models:DeadMLP", "--data", "random:8", "--batches", "2", "--dtype", dtype]
    assert main([*argv, "--json", str(out)]) == 0
    report = Report.from_json(out)
    assert report.dead_units("relu1") == [1, 4] and report.dead_units("relu2") == [7]
    assert report.meta["dtype"] == dtype
    assert all(s.abs_sum.dtype == torch.float64 for s in report.stats.values())  # JSON floats
    if dtype != "float32":  # the activations ran in that dtype, the statistics did not
        assert report.meta["kernels"]["ran"] == ["eager"]


def test_scan_dtype_casts_the_floating_tensors_of_dict_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyword batches ``{"features": float, "labels": long}``: --dtype bfloat16 casts the
    features (else the bf16 model refuses float32 inputs), not the integer labels."""
    (tmp_path / "dictdata.py").write_text(
        "from models import DictInputModel\n\n"
        "def batches():\n    return DictInputModel().make_batches(n=2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "scan.json"
    argv = ["scan", "models:DictInputModel", "--data", "dictdata:batches", "--dtype", "bfloat16"]
    assert main([*argv, "--json", str(out)]) == 0
    assert Report.from_json(out).dead_units("encoder.act") == [1]


def test_scan_max_tokens_checkpoint_and_the_frequency_table(
    opt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--max-tokens 40 on random ids of 2 x 8 tokens per batch, without --batches: 3
    batches (16, 32, 48 >= 40), 48 tokens. The killed units (bias -1000) are the zero bin
    of the printed and JSON histograms; every other unit (bias +10) fires on every token,
    the top bin. A second run with the same --checkpoint resumes the finished scan."""
    out, ckpt = tmp_path / "r.json", tmp_path / "scan.ckpt"
    argv = ["scan", f"hf:{opt_dir}", "--seq-len", "8", "--batch-size", "2", "--max-tokens", "40"]
    argv += ["--checkpoint", str(ckpt), "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["tokens"] == 48 and data["meta"]["batches"] == 3
    assert data["meta"]["checkpoint"]["resumed_from"] == 0 and ckpt.is_file()
    for site in data["sites"]:
        dead = len(OPT_DEAD[site["name"]])
        assert site["frequency"]["counts"] == [dead, *[0] * 8, 32 - dead]
        assert site["frequency"]["dead_fraction"] == dead / 32
    printed = capsys.readouterr().out
    table = printed[printed.index("activation frequency per site over 48 tokens") :]
    for name, dead_units in OPT_DEAD.items():
        row = next(line for line in table.splitlines() if name in line)
        assert f"{100 * len(dead_units) / 32:.1f}" in row  # dead %
        assert "▁········█" in row  # a few units never fire, the rest always

    assert main(argv) == 0  # resumed from the finished checkpoint: the same report
    again = json.loads(out.read_text())
    assert again["meta"]["checkpoint"]["resumed_from"] == 3
    assert again["sites"] == data["sites"] and again["meta"]["tokens"] == 48


def test_max_tokens_on_data_without_tokens_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["scan", "models:DeadMLP", "--data", "random:8", "--max-tokens", "100"]
    assert main(argv) == 2
    assert "tokens" in capsys.readouterr().err


def test_explain_an_untraceable_hf_model_gives_causes(
    opt_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch.fx cannot trace OPT: explain links its sites by a probe forward on the data,
    so the units killed by a -1000 bias get a cause, not "unknown"."""
    out = tmp_path / "expl.json"
    argv = ["explain", f"hf:{opt_dir}", "--data", "random", "--batches", "1", "--seq-len", "8"]
    assert main([*argv, "--json", str(out)]) == 0
    units = json.loads(out.read_text())["units"]
    dead = {(u["site"], u["unit"]) for u in units}
    assert dead == {(s, i) for s, idx in OPT_DEAD.items() for i in idx}
    assert all(u["cause"] in ("bias", "both") for u in units), units


# ---------------------------------------------------------------------- streamed text corpora


def test_text_corpus_is_streamed_and_bounded_by_max_tokens_and_its_end(
    opt_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A .jsonl corpus of 30 records of 6 words (180 tokens; this tokenizer has no eos)
    and a folder of it in two files: scan gets a generator (no len), told the bound
    ceil(40 / (2 x 8)) = 3 batches; --max-tokens 40 stops after 3 batches (48 tokens);
    without it, --batches 100 runs to the end of the data: 180 // 8 = 22 windows in 11
    batches, 176 tokens. The killed units are found either way."""
    scan_module = importlib.import_module("deadrelu.scan")  # the package exports the function
    seen: list[tuple[bool, int | None]] = []
    real_scan = scan_module.scan

    def spy(model: Any, data: Any, **kwargs: Any) -> Any:
        seen.append((hasattr(data, "__len__"), kwargs.get("max_batches")))
        return real_scan(model, data, **kwargs)

    monkeypatch.setattr(scan_module, "scan", spy)
    record = json.dumps({"text": "the cat sat on the mat"})
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text((record + "\n") * 30)
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "00.jsonl").write_text((record + "\n") * 12)
    (folder / "01.jsonl").write_text((record + "\n") * 18)
    out = tmp_path / "r.json"
    base = ["scan", f"hf:{opt_dir}", "--seq-len", "8", "--batch-size", "2", "--json", str(out)]
    for data in (corpus, folder):
        assert main([*base, "--data", str(data), "--max-tokens", "40"]) == 0
        meta = json.loads(out.read_text())["meta"]
        assert (meta["tokens"], meta["batches"]) == (48, 3)
        assert _dead_from_json(out) == OPT_DEAD
        assert seen[-1] == (False, 3)
        assert main([*base, "--data", str(data), "--batches", "100"]) == 0
        meta = json.loads(out.read_text())["meta"]
        assert (meta["tokens"], meta["batches"]) == (176, 11)
        assert seen[-1] == (False, 100)


def test_shard_of_a_streamed_source_takes_only_what_it_needs(opt_dir: Path, tmp_path: Path) -> None:
    """Under torchrun each rank shards the stream as it goes: rank r gets the batches
    i % 2 == r of the one-process stream, and taking rank 1's first batch has drawn
    exactly two batches from the source."""
    from deadrelu.sources import load_data, load_model

    loaded = load_model(f"hf:{opt_dir}")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\n" * 40)  # 240 tokens: 15 batches of 2 x 8
    one = [b["input_ids"] for b in load_data(str(corpus), loaded, batch_size=2, seq_len=8)]
    assert len(one) == 8  # --batches' default bounds the stream

    drawn = [0]

    def counted() -> Iterator[Any]:
        for b in load_data(str(corpus), loaded, batches=100, batch_size=2, seq_len=8):
            drawn[0] += 1
            yield b

    shard = scan_command._shard(counted(), 1, 2, None)
    first = next(shard)
    assert drawn[0] == 2 and torch.equal(first["input_ids"], one[1])
    for r in (0, 1):  # --max-tokens 80 over both ranks: batches 0..4 (16 tokens each)
        got = [b["input_ids"] for b in scan_command._shard(counted(), r, 2, 80)]
        assert [g.tolist() for g in got] == [o.tolist() for o in one[r:5:2]]


# ---------------------------------------------------------------------- errors under torchrun


def test_under_torchrun_rank0_prints_errors_other_ranks_only_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule: a bad option (ValueError, the same on every rank) is printed by rank 0 only,
    each rank exiting 2; an OSError (a checkpoint under a path that is a file: rank
    specific in general) by every rank, prefixed with its rank; a failure to join the
    process group by every rank."""
    base = ["scan", "models:DeadMLP", "--data", "random:8", "--batches", "1"]
    for rank in (0, 1):
        monkeypatch.setattr(scan_command, "_init_distributed", lambda a, r=rank: _ranks(r, 2))
        assert main([*base, "--fail-on", "deadish>5"]) == 2
        err = capsys.readouterr().err
        if rank == 0:
            assert err.count("\n") == 1 and "'deadish>5'" in err and "rank" not in err
        else:
            assert err == ""

    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    for rank in (0, 1):
        monkeypatch.setattr(scan_command, "_init_distributed", lambda a, r=rank: _ranks(r, 2))
        assert main([*base, "--checkpoint", str(blocker / "ck.pt")]) == 2
        err = capsys.readouterr().err
        assert "file.txt" in err and err.count("\n") == 1
        assert ("rank 1:" in err) == (rank == 1)

    def refuse(args: Any) -> Any:
        raise RuntimeError("no rendezvous")

    monkeypatch.setattr(scan_command, "_init_distributed", refuse)
    monkeypatch.setenv("RANK", "1")
    assert main(base) == 2
    assert "rank 1: could not join the torchrun process group: no rendezvous" in (
        capsys.readouterr().err
    )


def _ranks(rank: int, world: int) -> Any:
    return scan_command._Ranks(rank, world)


def _tiny_t5(transformers: Any) -> Any:
    """A 1+1-layer T5 (ReLU FFN of 16) whose wi rows are +1 in every input feature except
    rows 3 (encoder) and 5 (decoder), set to 0: z = 0 there, never > 0, so exactly those
    units are dead; the others see RMS-normed inputs whose sum is not 0 almost surely."""
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=32,
        d_model=8,
        d_kv=4,
        d_ff=16,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        dropout_rate=0.0,
        feed_forward_proj="relu",
        decoder_start_token_id=0,
    )
    model = transformers.T5ForConditionalGeneration(cfg)
    with torch.no_grad():
        model.encoder.block[0].layer[1].DenseReluDense.wi.weight[3] = 0.0
        model.decoder.block[0].layer[2].DenseReluDense.wi.weight[5] = 0.0
    return model


def test_encoder_decoder_reads_the_corpus_in_both_halves(tmp_path: Path) -> None:
    import_torchvision()
    transformers = pytest.importorskip("transformers")
    d = tmp_path / "t5"
    _tiny_t5(transformers).save_pretrained(d)
    _tiny_tokenizer(transformers).save_pretrained(d)  # type: ignore[attr-defined]
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat and a dog ran in the park\n" * 8)
    out = tmp_path / "t5.json"
    argv = ["scan", f"hf:{d}", "--data", str(text), "--seq-len", "6", "--batch-size", "2"]
    assert main([*argv, "--batches", "2", "--json", str(out)]) == 0
    report = Report.from_json(out)
    enc = "encoder.block.0.layer.1.DenseReluDense.act"
    dec = "decoder.block.0.layer.2.DenseReluDense.act"
    assert report.dead_units(enc) == [3] and report.dead_units(dec) == [5]
    # both halves ran on the 2 batches of 2 x 6 tokens, each masked by its own mask
    assert int(report.stats[enc].positions) == int(report.stats[dec].positions) == 24
    data = json.loads(out.read_text())
    assert {enc, dec} <= set(data["meta"]["masked_sites"])
    assert data["meta"]["tokens"] == 24
