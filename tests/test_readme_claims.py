"""The README's claims table is generated from the committed run, never typed by hand:
it must equal ``deadrelu lab --markdown docs/lab/results.json``."""

from __future__ import annotations

from pathlib import Path

from deadrelu.lab.runner import markdown_from_results

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- claims-table:start -->", "<!-- claims-table:end -->"


def _readme_table() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1, "claims-table markers missing"
    return text[text.index(START) + len(START) : text.index(END)].strip("\n") + "\n"


def test_readme_claims_table_equals_the_committed_run() -> None:
    generated = markdown_from_results(ROOT / "docs" / "lab" / "results.json")
    assert _readme_table() == generated, (
        "README's claims table differs from docs/lab/results.json; regenerate it with "
        "`deadrelu lab --markdown docs/lab/results.json` and paste it between the markers"
    )


def test_the_table_has_one_row_per_claim() -> None:
    rows = [ln for ln in _readme_table().splitlines() if ln.startswith("| C")]
    claims = [r.split("|")[1].strip() for r in rows]
    assert len(claims) == len(set(claims)) and claims == sorted(claims, key=lambda c: int(c[1:]))
