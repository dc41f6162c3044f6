"""Public definitions document themselves: every module, class, function and method without a leading
underscore in the listed files has a docstring, and a function that raises an exception itself names in its
docstring what it raises.

Read with ``ast`` (nothing is imported). ``MODULES`` lists the files held to this; add a file once its
definitions are documented.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = [
    "geometry_os/errors.py",
    "geometry_os/fileio.py",
    "geometry_os/systems/pixel_llm/text.py",
    "geometry_os/systems/pixel_llm/metrics.py",
    "geometry_os/systems/pixel_llm/lora.py",
    "geometry_os/systems/pixel_llm/freeze.py",
    "geometry_os/systems/pixel_llm/cpu_bf16.py",
    "geometry_os/systems/pixel_llm/demo_pixel_llm.py",
    "geometry_os/systems/pixel_llm/tokenizer_files.py",
    *sorted(
        str(path.relative_to(REPO))
        for name in ("vit", "xattn", "simple_vocab", "bpe", "hf_tokenizer", "pretrained", "serve", "onnx_export")
        for path in (REPO / "plugins" / name).glob("*.py")
    ),
]

# Names a docstring may use for a raised exception besides its own: its bases, as the project's errors
# subclass ValueError, LookupError, ...
RAISE_WORDS = ("raise", "error", "refuse", "fail", "invalid", "exception")

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def public_definitions(tree: ast.Module) -> Iterator[tuple[str, Definition]]:
    """Module-level classes and functions and the methods of those classes, by qualified name."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            yield node.name, node
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                        yield f"{node.name}.{item.name}", item


def is_command(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A click command: its docstring is the command's help, and what it raises is the CLI's one-line error."""
    return any("command" in ast.unparse(decorator) for decorator in function.decorator_list)


def own_raises(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Names of the exceptions ``function`` raises in its own body (not in nested functions; bare re-raises
    and ``NotImplementedError`` left out)."""
    names: list[str] = []
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if name and name != "NotImplementedError":
                names.append(name)
        stack.extend(ast.iter_child_nodes(node))
    return names


@pytest.mark.parametrize("module", MODULES)
def test_public_definitions_have_docstrings(module):
    tree = ast.parse((REPO / module).read_text(encoding="utf-8"))
    missing = [] if ast.get_docstring(tree) else ["(module)"]
    missing += [name for name, node in public_definitions(tree) if not ast.get_docstring(node)]
    assert not missing, f"{module}: no docstring on {', '.join(missing)}"


@pytest.mark.parametrize("module", MODULES)
def test_raising_functions_say_what_they_raise(module):
    tree = ast.parse((REPO / module).read_text(encoding="utf-8"))
    silent = []
    for name, node in public_definitions(tree):
        if isinstance(node, ast.ClassDef) or is_command(node):
            continue
        raised = own_raises(node)
        doc = (ast.get_docstring(node) or "").lower()
        if raised and not any(word in doc for word in (*RAISE_WORDS, *(r.lower() for r in raised))):
            silent.append(f"{name} ({', '.join(sorted(set(raised)))})")
    assert not silent, f"{module}: docstring does not say what is raised: {'; '.join(silent)}"
