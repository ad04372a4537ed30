"""``deadrelu scan`` under torchrun: one scan over every rank's shard, outputs from rank 0.

A real ``torchrun --nproc_per_node 2 -m deadrelu scan`` on two gloo CPU processes is
compared with the same command run in one process. Ground truth by construction
(:data:`TOKMODEL`): a token model whose units 1 and 4 have bias -1000 (dead) and whose
unit 3 fires only on the padding token (dead once padding is excluded by the attention
mask); the batches' real tokens per row are fixed, so ``--max-tokens 30`` must stop after
batch 3 (9 + 11 + 6 + 12 = 38 tokens), on one process and on two.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from deadrelu import scan_command
from deadrelu.cli import main

TOKMODEL = textwrap.dedent(
    """
    import os

    import torch
    from torch import nn

    VOCAB, DIM, UNITS, PAD = 50, 8, 6, 0
    LENGTHS = [(6, 3), (5, 6), (2, 4), (6, 6), (1, 5), (3, 3), (4, 2)]  # real tokens per row


    class TokenMLP(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(int(os.environ.get("RANK", "0")))  # another model on rank 1
            self.emb = nn.Embedding(VOCAB, DIM)
            self.fc = nn.Linear(DIM, UNITS)
            self.act = nn.ReLU()
            with torch.no_grad():
                self.emb.weight.uniform_(-0.1, 0.1)
                self.emb.weight[:, 0] = 0.0
                self.emb.weight[PAD, 0] = 10.0  # only the padding token has feature 0
                self.fc.weight.uniform_(-0.1, 0.1)  # |w . e| <= 0.08 < 1 = the bias
                self.fc.weight[:, 0] = 0.0
                self.fc.bias.fill_(1.0)
                self.fc.bias[[1, 4]] = -1000.0  # dead
                self.fc.weight[3, 0] = 1.0  # unit 3: z = 10 - 5 > 0 on padding only
                self.fc.bias[3] = -5.0

        def forward(self, input_ids, attention_mask=None):
            return self.act(self.fc(self.emb(input_ids)))


    def build():
        return TokenMLP()


    def batches():
        g = torch.Generator().manual_seed(0)
        for lens in LENGTHS:
            ids = torch.randint(1, VOCAB, (len(lens), 7), generator=g)  # T = 7 != U
            mask = torch.zeros(len(lens), 7, dtype=torch.int64)
            for r, n in enumerate(lens):
                mask[r, :n] = 1
            yield {"input_ids": ids.masked_fill(mask == 0, PAD), "attention_mask": mask}
    """
)
TOKENS_PER_BATCH = [9, 11, 6, 12, 6, 6, 6]  # sums of LENGTHS' rows
DEAD = {"act": [1, 3, 4]}
ARGV = ["scan", "tokmodel:build", "--data", "tokmodel:batches", "--max-tokens", "30"]
ARGV += ["--no-progress"]


def _sites(path: Path) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in json.loads(path.read_text())["sites"]}


def _assert_same_report(one: Path, two: Path) -> None:
    """Counts, extrema, classes and histograms exactly; float sums within 1e-6 relative."""
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["summary"] == b["summary"]
    for key in ("tokens", "batches", "dtype"):
        assert a["meta"][key] == b["meta"][key], key
    sa, sb = _sites(one), _sites(two)
    assert list(sa) == list(sb)
    for name in sa:
        assert (
            sa[name]["units"] == sb[name]["units"]
            and sa[name]["frequency"] == sb[name]["frequency"]
        )
        for field, va in sa[name]["stats"].items():
            ta, tb = torch.tensor(va), torch.tensor(sb[name]["stats"][field])
            if ta.is_floating_point() and field not in ("z_min", "z_max"):
                assert torch.allclose(ta, tb, rtol=1e-6, atol=0), field
            else:
                assert torch.equal(ta, tb), field


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "tokmodel.py").write_text(TOKMODEL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_torchrun_two_gloo_ranks_equal_one_process_and_only_rank0_writes(workdir: Path) -> None:
    assert main([*ARGV, "--json", "one.json"]) == 0
    one = json.loads((workdir / "one.json").read_text())
    assert {s["name"]: s["units"]["dead"] for s in one["sites"]} == DEAD
    assert one["meta"]["tokens"] == 38 == sum(TOKENS_PER_BATCH[:4]) and one["meta"]["batches"] == 4

    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun) if torchrun.exists() else shutil.which("torchrun") or "torchrun"]
    cmd += ["--standalone", "--nproc_per_node", "2", "--log-dir", "logs", "--redirects", "3"]
    cmd += ["-m", "deadrelu", *ARGV, "--json", "two.json", "--html", "two.html"]
    cmd += ["--checkpoint", "ck.pt"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=240, env=env)
    logs = {
        p.relative_to(workdir / "logs").as_posix(): p for p in (workdir / "logs").rglob("*.log")
    }
    out = {k: p.read_text() for k, p in logs.items()}
    assert run.returncode == 0, (run.stderr[-3000:], out)

    _assert_same_report(workdir / "one.json", workdir / "two.json")
    two = json.loads((workdir / "two.json").read_text())
    ranks = two["meta"]["ranks"]
    assert ranks["world_size"] == 2 and ranks["batches"] == [2, 2]  # round robin: 0,2 | 1,3
    # rank 0 printed the tables once; rank 1 printed nothing at all
    stdout = {k.split("/")[-2]: v for k, v in out.items() if k.endswith("stdout.log")}
    stderr = {k.split("/")[-2]: v for k, v in out.items() if k.endswith("stderr.log")}
    assert set(stdout) == {"0", "1"}
    assert stdout["0"].count("units dead") == 1 and stdout["0"].count("over 38 tokens") == 1
    assert stdout["1"] == "" and stderr["1"] == "", stderr["1"]
    assert (workdir / "two.html").read_text().count('id="frequency"') == 1
    assert sorted(p.name for p in workdir.glob("ck.pt*")) == ["ck.pt.rank0", "ck.pt.rank1"]


def test_shard_is_round_robin_and_max_tokens_counts_every_rank() -> None:
    batches = [{"input_ids": torch.zeros(1, n, dtype=torch.int64)} for n in (5, 1, 7, 2, 9)]
    got = [
        [int(b["input_ids"].shape[1]) for b in scan_command._shard(batches, r, 2, None)]
        for r in (0, 1)
    ]
    assert got == [[5, 7, 9], [1, 2]]
    # 5 + 1 + 7 = 13 >= 12: batch 2 is the last one, whichever rank reads it
    got = [
        [int(b["input_ids"].shape[1]) for b in scan_command._shard(batches, r, 3, 12)]
        for r in (0, 1, 2)
    ]
    assert got == [[5], [1], [7]]
    with pytest.raises(ValueError, match="carries no tokens"):
        list(scan_command._shard([torch.zeros(2, 3)], 0, 2, 10))


def test_a_rank_other_than_0_prints_and_writes_nothing(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(scan_command, "_init_distributed", lambda args: scan_command._Ranks(1, 2))
    argv = [*ARGV, "--json", "r.json", "--html", "r.html", "--fail-on", "dead>0"]
    assert main(argv) == 1  # the same exit status as rank 0 ...
    assert capsys.readouterr() == ("", "")  # ... but silent
    assert not (workdir / "r.json").exists() and not (workdir / "r.html").exists()
