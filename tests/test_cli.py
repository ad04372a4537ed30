"""The command line: ``deadrelu activations`` table, JSON and PNG; help; errors."""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from deadrelu.activations import names
from deadrelu.cli import add_activations_parser, build_parser, main
from deadrelu.plots import grid_size_px


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _assert_real_image(path: Path, size: tuple[int, int]) -> None:
    assert _png_size(path) == size
    image_mod = pytest.importorskip("PIL.Image")
    with image_mod.open(path) as img:
        img.load()  # decodes every pixel: fails on a truncated or corrupt file
        assert img.size == size
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20  # lines, text and shading, not blank


def test_activations_writes_table_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["activations", "--out", str(tmp_path)]) == 0
    png = tmp_path / "activations.png"
    _assert_real_image(png, grid_size_px(len(names())))
    out = capsys.readouterr().out
    for name in names():
        assert name in out
    assert "z <= 0" in out and "f'(0)" in out
    assert str(png) in out.replace("\n", "")


def test_png_path_subset_and_columns(tmp_path: Path) -> None:
    png = tmp_path / "deep" / "elu.png"
    argv = ["activations", "relu", "elu(alpha=0.3)", "--png", str(png), "--columns", "2"]
    assert main([*argv, "--dpi", "50", "--range", "-2", "2"]) == 0
    assert _png_size(png) == grid_size_px(2, columns=2, dpi=50) == (320, 130)
    assert not (tmp_path / "activations.png").exists()


def test_json_without_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["activations", "relu", "leaky_relu(0.2)", "elu", "selu", "--json", "--no-png"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["activations"]}
    assert doc["png"] is None and not any(tmp_path.iterdir())
    assert rows["relu"]["f_prime_at_0"] == 0.0
    assert rows["relu"]["zero_grad_region"] == "z <= 0"
    assert rows["leaky_relu(slope=0.2)"]["f_prime_at_0"] == 0.2
    assert rows["leaky_relu(slope=0.2)"]["defaults"] == {"slope": 0.01}
    assert rows["elu"]["f_prime_at_0"] == 1.0 and rows["elu"]["saturates"] is True
    assert rows["selu"]["f_prime_at_0"] == pytest.approx(1.0507009873554805 * 1.6732632423543772)
    assert rows["relu"]["torch_modules"] == ["nn.ReLU"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["activations", "tanhh", "--no-png"], "known: relu"),
        (["activations", "elu(alpha=-1)", "--no-png"], "must be > 0"),
        (["activations", "--range", "3", "1"], "low < high"),
    ],
)
def test_errors_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err.replace("\n", "")


def test_every_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = add_activations_parser(parser.add_subparsers())
    for action in sub._actions:
        assert action.help, f"option {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit) as info:
        main(["activations", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--png", "--no-png", "--range", "--columns", "--dpi", "--json"):
        assert option in text


def test_top_level_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    help_text = build_parser().format_help()
    assert "activations" in help_text and "lab" in help_text
    assert main([]) == 0
    assert "activations" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from deadrelu import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_module_entry_point(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "deadrelu.cli", "activations", "relu", "--json", "--no-png"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp_path)
    assert json.loads(out.stdout)["activations"][0]["name"] == "relu"


def test_lab_markdown_prints_the_claims_table_of_a_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = Path(__file__).resolve().parents[1] / "docs" / "lab" / "results.json"
    assert main(["lab", "--markdown", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| claim | the notes say | verdict | key number | from |"
    assert lines[2].startswith("| C1 | a dead unit outputs 0 for any input |")
    assert main(["lab", "--markdown", str(results.with_name("missing.json"))]) == 2
