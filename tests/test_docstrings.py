"""Public definitions document themselves: every module, class, function and method without a leading
underscore (in a class whose name has none) has a docstring, and a function that raises an exception itself
names in its docstring what it raises.

Read with ``ast`` (nothing is imported). Held to this: every module of the core (``geometry_os/``, found
by walking the folder, so a new module is covered when it is added) and the default plugins listed in
``PLUGINS``. ``__init__`` and other dunder methods are left out (the class docstring covers them), as are
pydantic fields and dataclass fields (they are assignments, not definitions).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = sorted(str(path.relative_to(REPO)) for path in (REPO / "geometry_os").rglob("*.py"))
PLUGINS = ("vit", "xattn", "simple_vocab", "bpe", "hf_tokenizer", "pretrained", "serve", "onnx_export")
MODULES = [
    *CORE,
    *sorted(str(path.relative_to(REPO)) for name in PLUGINS for path in (REPO / "plugins" / name).glob("*.py")),
]

# Names a docstring may use for a raised exception besides its own: its bases, as the project's errors
# subclass ValueError, LookupError, ...
RAISE_WORDS = ("raise", "error", "refuse", "fail", "invalid", "exception")

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def public_definitions(body: list[ast.stmt], prefix: str = "") -> Iterator[tuple[str, Definition]]:
    """The public classes and functions of a module's (or a class's) ``body`` and, recursively, those of its
    public classes, by qualified name. Definitions under ``if``/``try`` (e.g. ``if TYPE_CHECKING:``) count."""
    for node in body:
        if isinstance(node, (ast.If, ast.Try)):
            nested = [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
            yield from public_definitions(nested, prefix)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            yield f"{prefix}{node.name}", node
            if isinstance(node, ast.ClassDef):
                yield from public_definitions(node.body, f"{prefix}{node.name}.")


def test_the_core_is_covered():
    """Every module of the core is checked, at any depth, and the walk found the packages it should."""
    assert "geometry_os/errors.py" in MODULES
    assert "geometry_os/systems/pixel_llm/modeling.py" in MODULES
    assert "geometry_os/systems/pixel_llm/tests/test_pixel_llm.py" in MODULES


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
    missing += [name for name, node in public_definitions(tree.body) if not ast.get_docstring(node)]
    assert not missing, f"{module}: no docstring on {', '.join(missing)}"


@pytest.mark.parametrize("module", MODULES)
def test_raising_functions_say_what_they_raise(module):
    tree = ast.parse((REPO / module).read_text(encoding="utf-8"))
    silent = []
    for name, node in public_definitions(tree.body):
        if isinstance(node, ast.ClassDef) or is_command(node):
            continue
        raised = own_raises(node)
        doc = (ast.get_docstring(node) or "").lower()
        if raised and not any(word in doc for word in (*RAISE_WORDS, *(r.lower() for r in raised))):
            silent.append(f"{name} ({', '.join(sorted(set(raised)))})")
    assert not silent, f"{module}: docstring does not say what is raised: {'; '.join(silent)}"


def project_errors() -> dict[str, set[str]]:
    """Each exception class of ``geometry_os/errors.py`` -> itself and its bases defined there (a docstring
    naming ``GeometryOSError`` covers a ``ConfigError``, which a caller catches by either)."""
    bases = {
        node.name: {ast.unparse(base) for base in node.bases}
        for node in ast.parse((REPO / "geometry_os" / "errors.py").read_text(encoding="utf-8")).body
        if isinstance(node, ast.ClassDef)
    }
    named: dict[str, set[str]] = {}
    for error in bases:
        names, todo = {error}, [error]
        while todo:
            for base in bases.get(todo.pop(), set()) & bases.keys():
                if base not in names:
                    names.add(base)
                    todo.append(base)
        named[error] = names
    return named


@pytest.mark.parametrize("module", CORE)
def test_core_functions_name_the_project_errors_they_raise(module):
    """In the core, a public function that raises one of the project's errors names that class (or a base
    of it from ``errors.py``) in its docstring, as a ``Raises`` line or in a sentence."""
    errors = project_errors()
    tree = ast.parse((REPO / module).read_text(encoding="utf-8"))
    unnamed = []
    for name, node in public_definitions(tree.body):
        if isinstance(node, ast.ClassDef) or is_command(node):
            continue
        doc = ast.get_docstring(node) or ""
        for raised in sorted({r for r in own_raises(node) if r in errors}):
            if not any(error in doc for error in errors[raised]):
                unnamed.append(f"{name} ({raised})")
    assert not unnamed, f"{module}: docstring does not name the project error raised: {'; '.join(unnamed)}"
