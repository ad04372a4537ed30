"""Every ```python block of README.md runs as written (issue 11, item 13).

Each block runs in its own fresh namespace (a reader copies one block at a time, so each
must be self-contained), in order, with a temporary directory as the working directory
(blocks write files such as ``scan.json``). A line ``<expression>  # <literal> ...`` whose
comment starts with a Python literal (``[3, 17]``, ``{3: 'bias'}``, ...) is checked: the
expression must equal the literal, so the README's claimed results are tested too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of every ```python block of ``text``."""
    out = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start(1)) + 1
        out.append((line, m.group(1)))
    return out


def _literal_prefix(comment: str) -> tuple[bool, object]:
    """The longest prefix of ``comment`` that is a Python literal (a list, dict, tuple or
    string: the comment must start with one of ``[{("'``)."""
    if not comment or comment[0] not in "[{(\"'":
        return False, None
    for end in range(len(comment), 0, -1):
        try:
            return True, ast.literal_eval(comment[:end])
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
    return False, None


def with_checks(code: str) -> tuple[str, int]:
    """``code`` with each ``expr  # literal`` line turned into an assertion; the count."""
    lines = []
    checks = 0
    for line in code.splitlines():
        head, sep, comment = line.partition("  #")
        stripped = head.strip()
        if sep and stripped and not line.lstrip().startswith("#"):
            ok, value = _literal_prefix(comment.strip())
            try:
                ast.parse(stripped, mode="eval")
                is_expr = True
            except SyntaxError:
                is_expr = False
            if ok and is_expr:
                indent = head[: len(head) - len(head.lstrip())]
                lines.append(
                    f"{indent}assert ({stripped}) == {value!r}, ({stripped!r}, {stripped})"
                )
                checks += 1
                continue
        lines.append(line)
    return "\n".join(lines) + "\n", checks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 2
    assert sum(with_checks(code)[1] for _, code in BLOCKS) >= 3  # claimed results checked


def test_with_checks_turns_literal_comments_into_assertions() -> None:
    code, n = with_checks("x = [1]\nx  # [1]   (a note)\nprint(x)  # prints it\n")
    assert n == 1 and "assert (x) == [1]" in code and "print(x)  # prints it" in code
    with pytest.raises(AssertionError):
        exec(with_checks("y = 2\ny  # [3]\n")[0], {})


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_block_runs(
    line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread avoids pool wake-ups on a busy machine
    source, _ = with_checks(code)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    try:
        exec(compile(source, f"README.md:{line}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
