"""The notes' claims in one place, and one table row per claim.

:data:`CLAIMS` holds each claim of ``CLAIMS.md`` (id, a short text for tables, the full
text). :func:`claim_rows` turns the experiments of a run (result dicts as
``results.json`` holds them) into one :class:`ClaimRow` per claim: when several
experiments test one claim (C11: E7 for "zero-centred, faster, better", E9 for "costs an
exp") their verdicts are combined by the claim's rule in :data:`COMBINE_RULES` (default
:func:`deadrelu.lab.verdicts.combine`) and both key numbers are shown. The terminal table,
the HTML report and the Markdown table (:func:`markdown_table`) all come from these rows.

Fragile: a part whose verdict fewer than 90 % of the bootstrap resamples of its seeds
reproduce is fragile; a row is fragile when any of its parts is (a conservative bound for
the combined verdict, whose own stability is not resampled jointly).

Timing-based parts (E9) have their verdict in ``timings.json`` only; pass that file's
``experiments`` mapping as ``timings`` to fill them in (``results.json`` alone shows them
as "n/a, timing-based").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deadrelu.lab.verdicts import combine

__all__ = [
    "CLAIMS",
    "COMBINE_RULES",
    "Claim",
    "ClaimPart",
    "ClaimRow",
    "claim_rows",
    "markdown_table",
]


@dataclass(frozen=True)
class Claim:
    """One claim of the notes: ``id`` (``"C7"``), ``short`` (for tables), ``text`` (as
    ``CLAIMS.md`` states it)."""

    id: str
    short: str
    text: str


def _claims(*rows: tuple[str, str, str]) -> dict[str, Claim]:
    return {cid: Claim(cid, short, text) for cid, short, text in rows}


#: Every claim of CLAIMS.md, by id (C1 ... C16), in order.
CLAIMS: dict[str, Claim] = _claims(
    (
        "C1",
        "a dead unit outputs 0 for any input",
        "A unit of a hidden layer is dead when it contributes nothing (outputs 0) for any "
        "input value.",
    ),
    (
        "C2",
        "dL/dw = 0 because da/dz = 0 for z < 0",
        "dL/dw = dL/da · da/dz · dz/dw; for z = w·x + b < 0 the term da/dz is 0, so the "
        "unit's weights and bias get no gradient.",
    ),
    ("C3", "cause I: a very high learning rate", "Cause I: a very high learning rate."),
    (
        "C4",
        "cause II: a large negative bias",
        "Cause II: a large negative bias (a large update that drives b far below 0).",
    ),
    ("C5", "a dead unit is not recoverable", "A dead unit is not recoverable."),
    ("C6", "remedy: a low learning rate", "Use a low learning rate."),
    (
        "C7",
        "remedy: bias 0.01",
        "Initialise biases to a small positive value, e.g. 0.01.",
    ),
    ("C8", "remedy: use a variant", "Don't use ReLU: use a variant."),
    (
        "C9",
        "Leaky ReLU (0.01): no dying; why 0.01?",
        "Leaky ReLU f(z) = max(0.01 z, z): non-saturating, cheap, no dying, close to "
        "zero-centred. The notes ask: why 0.01?",
    ),
    (
        "C10",
        "PReLU performs better than Leaky ReLU",
        "Parametric ReLU, f(z) = a·z for z < 0 with a learned: as Leaky ReLU but more "
        "flexible, performs better.",
    ),
    (
        "C11",
        "ELU: zero-centred, faster, better; costs an exp",
        "ELU f(z) = α(e^z − 1) for z < 0: continuous and differentiable, outputs close to "
        "zero-centred, faster convergence, better generalisation, no dying; costs an exp. "
        "α in 0.1 to 0.3.",
    ),
    (
        "C12",
        "SELU self-normalises",
        "SELU (λ ≈ 1.0507, α ≈ 1.6733): self-normalising, activations keep mean 0 and "
        "standard deviation 1 through the layers, so learning is faster.",
    ),
    ("C13", "SELU is new, less studied", "SELU's drawback: new, less studied."),
    (
        "C14",
        "derivatives match autograd",
        "The derivative of every variant, as a formula, matching autograd, including the "
        "convention at z = 0.",
    ),
    (
        "C15",
        "deep narrow nets are born dead; RAI helps",
        "Born dead: the chance that a deep, narrow ReLU network is dead at initialisation, "
        "by depth and width, and how randomized asymmetric initialization (RAI) lowers it.",
    ),
    (
        "C16",
        "ReDo recycling cures a trained net",
        "Recycling dormant units (ReDo, Sokar et al. 2023) cures a trained network without "
        "restarting it.",
    ),
)

#: How one claim's verdicts from several experiments become one: (rule in words, function).
#: Claims not listed use :func:`deadrelu.lab.verdicts.combine`.
CombineFn = Callable[[Sequence[str]], str]
_DEFAULT_RULE = (
    "one verdict from the parts: all supported -> supported, all not supported -> not "
    "supported, otherwise mixed (n/a parts ignored)"
)
COMBINE_RULES: dict[str, tuple[str, CombineFn]] = {
    "C11": (
        "C11 bundles several statements: E7 tests 'zero-centred, faster, better "
        "generalisation' (reproducible), E9 'costs an exp' (timing-based); the claim is "
        + _DEFAULT_RULE,
        combine,
    ),
}


@dataclass(frozen=True)
class ClaimPart:
    """One experiment's verdict on a claim (as shown in the table)."""

    experiment: str
    verdict: str
    summary: str
    rule: str = ""
    source: str = "numbers"
    preset: str = ""
    n_seeds: int | None = None
    axis: str = "seeds"
    stability: float | None = None
    resamples: int = 0
    fragile: bool = False
    why: str = ""

    @property
    def provenance(self) -> str:
        """``"E7: quick, 5 seeds"`` (and ``", timing-based"``)."""
        n = self.n_seeds
        seeds = "" if not n else ("1 run" if n == 1 else f"{n} {self.axis}")
        bits = [b for b in (self.preset, seeds) if b]
        if self.source == "timings":
            bits.append("timing-based")
        return f"{self.experiment}" + (f" ({', '.join(bits)})" if bits else "")


@dataclass(frozen=True)
class ClaimRow:
    """One claim, its combined verdict and its parts."""

    claim: str
    text: str
    verdict: str
    parts: list[ClaimPart] = field(default_factory=list)
    rule: str = ""

    @property
    def fragile(self) -> bool:
        """True when any part's verdict is fragile (below 90 % bootstrap stability)."""
        return any(p.fragile for p in self.parts)

    @property
    def where(self) -> str:
        """The experiments, ``"E7, E9"``."""
        return ", ".join(p.experiment for p in self.parts) or "—"

    @property
    def stability(self) -> float | None:
        """Lowest stability of the parts (None when no part was resampled)."""
        shares = [p.stability for p in self.parts if p.stability is not None]
        return min(shares) if shares else None

    @property
    def label(self) -> str:
        """The verdict as shown: ``"mixed"``, ``"supported (fragile, 72 %)"``."""
        if self.fragile and self.stability is not None:
            return f"{self.verdict} (fragile, {self.stability:.0%})"
        return self.verdict

    @property
    def summary(self) -> str:
        """The key number(s): one part's summary, or ``"E7: ...; E9: ..."``."""
        if len(self.parts) == 1:
            return self.parts[0].summary
        return "; ".join(f"{p.experiment}: {p.summary}" for p in self.parts)

    @property
    def why(self) -> str:
        """Why the row is fragile (empty when it is not)."""
        return "; ".join(f"{p.experiment}: {p.why}" for p in self.parts if p.fragile)

    @property
    def provenance(self) -> str:
        """Where each part's numbers came from: ``"E7 (quick, 5 seeds); E9 (...)"``."""
        return "; ".join(p.provenance for p in self.parts)


def _claim_num(cid: str) -> tuple[int, str]:
    return (int(cid[1:]) if cid[1:].isdigit() else 999, cid)


def _part(exp: Mapping[str, Any], cid: str, timing: Mapping[str, Any] | None) -> ClaimPart:
    rec = dict((exp.get("claim_verdicts") or {}).get(cid) or {})
    if not rec:  # an old-style result: the experiment's verdict, or numbers.claim_verdicts
        numbers = exp.get("numbers") or {}
        rec = {
            "verdict": (numbers.get("claim_verdicts") or {}).get(cid, exp.get("verdict", "n/a")),
            "summary": (numbers.get("claim_summaries") or {}).get(cid, exp.get("summary", "")),
            "rule": exp.get("verdict_rule", ""),
            "source": "timings" if numbers.get("verdict_source") == "timings" else "numbers",
            "preset": exp.get("preset", ""),
            "n_seeds": exp.get("n_seeds"),
        }
    if rec.get("source") == "timings" and timing is not None:
        measured = (timing.get("claim_verdicts") or {}).get(cid)
        if measured:
            rec = {**rec, **measured}
        elif "verdict" in timing:  # an old-style timing entry
            rec = {**rec, "verdict": timing["verdict"], "summary": timing.get("summary", "")}
    stab = rec.get("stability") or {}
    return ClaimPart(
        experiment=str(exp.get("id", "?")),
        verdict=str(rec.get("verdict", "n/a")),
        summary=str(rec.get("summary", "")),
        rule=str(rec.get("rule", "")),
        source=str(rec.get("source", "numbers")),
        preset=str(rec.get("preset", "")),
        n_seeds=rec.get("n_seeds"),
        axis=str(rec.get("axis") or "seeds"),
        stability=stab.get("share"),
        resamples=int(stab.get("resamples", 0) or 0),
        fragile=bool(stab.get("fragile", False)),
        why=str(stab.get("why", "")),
    )


def claim_rows(
    experiments: Sequence[Mapping[str, Any]],
    timings: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[ClaimRow]:
    """One row per claim tested by ``experiments``, sorted by claim number.

    ``experiments``: result dicts (:meth:`ExperimentResult.to_dict`, or the entries of
    ``results.json``), in run order (the parts of a row keep that order). ``timings``:
    ``timings.json``'s ``experiments`` mapping, to fill in timing-based verdicts.
    """
    parts: dict[str, list[ClaimPart]] = {}
    for exp in experiments:
        timing = (timings or {}).get(str(exp.get("id")))
        for cid in exp.get("claims", ()):
            parts.setdefault(str(cid), []).append(_part(exp, str(cid), timing))
    rows = []
    for cid in sorted(parts, key=_claim_num):
        ps = parts[cid]
        claim = CLAIMS.get(cid)
        if len(ps) == 1:
            verdict, rule = ps[0].verdict, ""
        else:
            rule, fn = COMBINE_RULES.get(cid, (_DEFAULT_RULE, combine))
            verdict = fn([p.verdict for p in ps])
        rows.append(ClaimRow(cid, claim.short if claim else "", verdict, ps, rule))
    return rows


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[ClaimRow]) -> str:
    """The claims table as GitHub Markdown (one line per claim, ending in a newline)."""
    lines = [
        "| claim | the notes say | verdict | key number | from |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.claim} | {_md(r.text)} | {_md(r.label)} | {_md(r.summary)} | "
            f"{_md(r.provenance)} |"
        )
    return "\n".join(lines) + "\n"
