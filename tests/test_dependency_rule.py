"""The dependency rule: the core (``geometry_os/``) imports no plugin and names no built-in plugin's component;
a plugin imports from ``geometry_os`` only ``plugin_api``, ``errors``, ``fileio`` and its own package.

Imports are read with ``ast``: module-level and function-local ``import`` / ``from ... import``,
``importlib.import_module("...")`` with a literal name, and lazy ``"module:attribute"`` factory strings.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "geometry_os"
PLUGINS = ROOT / "plugins"  # installed as geometry_os.plugins
PLUGINS_PACKAGE = "geometry_os.plugins"
PLUGIN_API = "geometry_os.systems.pixel_llm.plugin_api"
ALLOWED_FOR_PLUGINS = (PLUGIN_API, "geometry_os.errors", "geometry_os.fileio")
FACTORY_STRING = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+):[A-Za-z_][\w.]*$")

# Core string literals equal to a built-in component's name that mean something else, with the reason.
# (module, literal) -> why it is not a component name there.
CORE_LITERAL_EXCEPTIONS = {
    ("geometry_os/host.py", "json"): 'pydantic model_dump(mode="json"), a serialisation mode',
    ("geometry_os/systems/pixel_llm/calls.py", "json"): 'pydantic model_dump(mode="json"), a serialisation mode',
    ("geometry_os/systems/pixel_llm/config.py", "json"): 'pydantic model_dump(mode="json"), a serialisation mode',
    ("geometry_os/systems/pixel_llm/generation_config.py", "greedy"): "HF generation mode, a core concept",
    ("geometry_os/systems/pixel_llm/generation_config.py", "sample"): "HF generation mode, a core concept",
    ("geometry_os/systems/pixel_llm/generation_config.py", "beam"): "HF generation mode, a core concept",
    ("geometry_os/systems/pixel_llm/collate.py", "captions"): "the CaptionBatch key",
    ("geometry_os/systems/pixel_llm/demo_pixel_llm.py", "captions"): "the CaptionBatch key",
    ("geometry_os/systems/pixel_llm/records.py", "captions"): 'the caption-file entry key ("captions": [...])',
    ("geometry_os/systems/pixel_llm/records.py", "json"): "read_caption_file's file layout (kind), not a component",
    ("geometry_os/systems/pixel_llm/records.py", "jsonl"): "read_caption_file's file layout (kind), not a component",
    ("geometry_os/systems/pixel_llm/records.py", "coco"): "read_caption_file's file layout (kind), not a component",
}


def module_name(path: Path) -> str:
    """The dotted name ``path`` is imported as (``plugins/x/y.py`` -> ``geometry_os.plugins.x.y``)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "plugins":
        parts = ["geometry_os", *parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted target) of every import in ``source`` (the module ``module``): ``from M import n`` gives
    ``M.n`` when ``n`` may be a submodule and ``M`` otherwise, relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.append((node.lineno, f"{base}.{alias.name}"))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
                if isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
                    found.append((node.lineno, node.args[0].value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = FACTORY_STRING.match(node.value)
            if match and match.group(1).startswith("geometry_os"):
                found.append((node.lineno, match.group(1)))
    return found


def _within(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def plugin_violations(source: str, module: str, own_package: str, is_package: bool = False) -> list[str]:
    """Imports of a plugin module that break the rule: anything of ``geometry_os`` that is not
    ``plugin_api`` / ``errors`` / ``fileio`` (or a name in them) or in ``own_package``."""
    bad = []
    for line, target in imported_modules(source, module, is_package):
        if not _within(target, "geometry_os") or _within(target, own_package):
            continue
        if any(_within(target, allowed) for allowed in ALLOWED_FOR_PLUGINS):
            continue
        bad.append(f"{module}:{line} imports {target}")
    return bad


def core_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Imports of a core module that reach a plugin (``geometry_os.plugins.*``)."""
    return [
        f"{module}:{line} imports {target}"
        for line, target in imported_modules(source, module, is_package)
        if _within(target, PLUGINS_PACKAGE)
    ]


def code_literals(source: str) -> list[tuple[int, str]]:
    """(line, value) of the string literals of ``source`` outside docstrings."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def core_files() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if "tests" not in p.relative_to(CORE).parts)


def plugin_files() -> list[Path]:
    return sorted(PLUGINS.rglob("*.py"))


def own_package(path: Path) -> str:
    rel = path.relative_to(PLUGINS)
    return f"{PLUGINS_PACKAGE}.{rel.parts[0]}" if len(rel.parts) > 1 else PLUGINS_PACKAGE


def test_the_core_imports_no_plugin():
    bad = []
    for path in core_files():
        bad += core_violations(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    assert bad == []


def test_plugins_import_only_the_plugin_api_errors_fileio_and_their_own_package():
    assert len(plugin_files()) > 40  # the checker sees the plugins
    bad = []
    for path in plugin_files():
        source = path.read_text(encoding="utf-8")
        bad += plugin_violations(source, module_name(path), own_package(path), path.name == "__init__.py")
    assert bad == []


def test_the_core_names_no_builtin_component_in_code():
    from geometry_os.host import Host

    names = {component.name for component in Host(entry_points=False).system("pixel_llm").components}
    assert {"vit", "xattn", "simple", "greedy", "shapes", "json", "amp"} <= names
    found = set()
    for path in core_files():
        rel = path.relative_to(ROOT).as_posix()
        for line, value in code_literals(path.read_text(encoding="utf-8")):
            if value in names and (rel, value) not in CORE_LITERAL_EXCEPTIONS:
                found.add(f"{rel}:{line} {value!r}")
    assert sorted(found) == []


def test_every_literal_exception_is_still_needed():
    """An exception the code no longer needs is removed, so that the list stays the exact set of reasons."""
    unused = []
    for rel, value in CORE_LITERAL_EXCEPTIONS:
        if value not in {v for _, v in code_literals((ROOT / rel).read_text(encoding="utf-8"))}:
            unused.append((rel, value))
    assert unused == []


VIOLATING_PLUGIN = """
import importlib
from geometry_os.systems.pixel_llm.plugin_api import hookimpl      # allowed
from geometry_os.errors import ConfigError                         # allowed
from geometry_os.fileio import atomic_write_text                   # allowed
from geometry_os.plugins.mine.helpers import helper                # its own package: allowed
from . import sibling                                              # its own package: allowed


def build(options):
    from geometry_os.systems.pixel_llm.modeling import PixelLLM    # a core module: refused
    from geometry_os.plugins.vit import ViTOptions                 # another plugin: refused
    from ..xattn import model                                      # another plugin, relatively: refused
    importlib.import_module("geometry_os.plugins.bpe.tokenizer")   # another plugin by name: refused
    import geometry_os.cli                                         # a core module: refused


@hookimpl
def register_encoders(register):
    register("mine", "geometry_os.plugins.simple_vocab.vocab:SimpleVocabulary")  # lazy factory: refused
"""


def test_the_checker_refuses_a_violating_plugin():
    bad = plugin_violations(VIOLATING_PLUGIN, "geometry_os.plugins.mine", "geometry_os.plugins.mine", True)
    targets = sorted(message.split(" imports ")[1] for message in bad)
    assert targets == [
        "geometry_os.cli",
        "geometry_os.plugins.bpe.tokenizer",
        "geometry_os.plugins.simple_vocab.vocab",
        "geometry_os.plugins.vit.ViTOptions",
        "geometry_os.plugins.xattn.model",
        "geometry_os.systems.pixel_llm.modeling.PixelLLM",
    ]


def test_the_checker_refuses_a_core_module_importing_a_plugin():
    source = (
        "import importlib\n"
        "from .config import PixelLLMConfig\n"
        "def f():\n"
        "    from geometry_os.plugins.vit import ViTOptions\n"
        "    return importlib.import_module('geometry_os.plugins.xattn.model')\n"
    )
    bad = core_violations(source, "geometry_os.systems.pixel_llm.thing")
    assert [message.split(" imports ")[1] for message in bad] == [
        "geometry_os.plugins.vit.ViTOptions",
        "geometry_os.plugins.xattn.model",
    ]


def test_the_literal_check_sees_code_and_skips_docstrings():
    source = '"""Uses vit."""\ndef f():\n    """The xattn decoder."""\n    return get("encoder", "vit")\n'
    assert code_literals(source) == [(4, "encoder"), (4, "vit")]


def test_hookspecs_docstrings_name_only_protocols_that_exist():
    from geometry_os.systems.pixel_llm import hookspecs, protocols

    text = (ROOT / "geometry_os/systems/pixel_llm/hookspecs.py").read_text(encoding="utf-8")
    named = set(re.findall(r"protocols\.(?!py\b)(\w+)", text))  # protocols.py is the file
    assert {"Encoder", "Decoder", "DecoderCache", "Tokenizer", "DatasetReader", "DecodingStrategy", "Trainer"} <= named
    assert sorted(n for n in named if not hasattr(protocols, n)) == []
    for kind, hook in hookspecs.COMPONENT_KINDS.items():
        assert getattr(hookspecs, hook).__doc__, kind


def test_plugin_api_exports_what_it_lists_without_importing_torch():
    code = (
        "import sys\n"
        f"import {PLUGIN_API} as api\n"
        "assert 'torch' not in sys.modules\n"
        "missing = [n for n in api.__all__ if not hasattr(api, n)]\n"
        "assert missing == [], missing\n"
        "assert sorted(api.__all__) == sorted(api._LAZY), 'the table and __all__ differ'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_plugin_api_raises_attribute_error_for_unknown_names():
    import geometry_os.systems.pixel_llm.plugin_api as api

    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        api.nothing_here  # noqa: B018 - the attribute access is the test
