"""docs/architecture.md matches the code: every ``file.py::Name.attr`` hop of its traces is defined in that
file, every file and test it names exists, and each trace row names its function."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
HOP = re.compile(r"`((?:geometry_os|plugins)/[\w/]+\.py)::([\w.]+)`")
PATH = re.compile(r"`((?:geometry_os|plugins|tests|docs)/[\w/.-]+)`")


def defined_names(path: Path) -> set[str]:
    """Qualified names of the functions and classes (methods as ``Class.method``) that ``path`` defines."""
    names: set[str] = set()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                names.add(name)
                if isinstance(child, ast.ClassDef):
                    visit(child, name + ".")

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return names


def check_hops(text: str) -> list[str]:
    """What is wrong with the ``file::name`` references in ``text`` (empty when all exist)."""
    problems = []
    for file, name in HOP.findall(text):
        path = ROOT / file
        if not path.is_file():
            problems.append(f"{file}: no such file")
        elif name not in defined_names(path):
            problems.append(f"{file}::{name}: not defined there")
    return problems


def section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_every_hop_names_a_function_that_exists():
    text = DOC.read_text(encoding="utf-8")
    assert len(HOP.findall(text)) >= 30
    assert check_hops(text) == []


@pytest.mark.parametrize("heading", ["Trace: captioning an image", "Trace: one training step"])
def test_each_trace_row_names_its_function(heading):
    rows = [
        line for line in section(DOC.read_text(encoding="utf-8"), heading).splitlines() if re.match(r"\| \d+ \|", line)
    ]
    assert len(rows) >= 10
    assert [row for row in rows if not HOP.search(row)] == []


def test_every_named_file_exists():
    text = DOC.read_text(encoding="utf-8")
    missing = [p for p in PATH.findall(text) if not (ROOT / p.rstrip("/")).exists()]
    assert missing == []


def test_the_checker_finds_a_stale_hop():
    assert check_hops("`geometry_os/systems/pixel_llm/workflows.py::caption`") == []
    assert check_hops("`geometry_os/systems/pixel_llm/workflows.py::no_such_function`") != []
    assert check_hops("`geometry_os/no_such_file.py::x`") != []
    assert check_hops("`plugins/xattn/model.py::LanguageDecoder.no_such_method`") != []
