"""Third-party plugins that break (real distributions with entry points, made by ``make_plugin_dist``): at
import, at registration, inside a factory, inside a decoding step, returning the wrong thing, taking a
name that is taken, or calling sys.exit(). Each time the host names the plugin, and every other
component keeps working: a default model still builds and generates.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from click.testing import CliRunner
from conftest import make_plugin_dist
from reliability_support import assert_one_line

from geometry_os.cli import cli
from geometry_os.errors import ComponentError, GeometryOSError
from geometry_os.host import Host, PluginLoadWarning, set_host

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

HEADER = """
from pydantic import BaseModel, ConfigDict
from geometry_os.systems.pixel_llm.hookspecs import hookimpl


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_size: int = 32
    embed_dim: int = 32
"""

PLUGINS = {
    "import": "raise RuntimeError('boom at import')\n",
    "exit": "import sys\nsys.exit(3)\n",
    "register": HEADER
    + """
@hookimpl
def register_encoders(register):
    register("half", lambda options: None, Options)  # registered, then rolled back
    raise ValueError("boom while registering")
""",
    "factory": HEADER
    + """
def build(options):
    raise MemoryError("boom inside the factory")


@hookimpl
def register_encoders(register):
    register("exploding", build, Options)
""",
    "lazy": HEADER
    + """
@hookimpl
def register_encoders(register):
    register("ghost", "geo_no_such_module.model:Encoder", Options)
""",
    "wrong_type": HEADER
    + """
@hookimpl
def register_encoders(register):
    register("stringly", lambda options: "an encoder, honestly", Options)


@hookimpl
def register_decoding_strategies(register):
    register("nodecode", lambda: object())
""",
    "decoding": """
from geometry_os.systems.pixel_llm.hookspecs import hookimpl


class Broken:
    def decode(self, model, features, config, generator=None):
        raise ZeroDivisionError("boom inside a decoding step")


class Liar:
    def decode(self, model, features, config, generator=None):
        return "a caption"


@hookimpl
def register_decoding_strategies(register):
    register("broken", lambda: Broken())
    register("liar", lambda: Liar())
""",
    "duplicate": HEADER
    + """
@hookimpl
def register_encoders(register):
    register("mine", lambda options: None, Options)
    register("vit", lambda options: None, Options)  # taken by the built-in vit plugin
""",
    "override": HEADER
    + """
@hookimpl
def register_encoders(register):
    register("vit", lambda options: None, Options, override=True)  # replaces the built-in...
    raise ValueError("boom after overriding")  # ...then fails: the built-in must come back
""",
    "commands": """
from geometry_os.systems.pixel_llm.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    raise RuntimeError("boom while adding commands")
""",
}


def install(tmp_path, monkeypatch, kind: str) -> str:
    """Install plugin ``kind`` as distribution ``geo-<kind>`` with entry point ``fault_<kind>``; returns its name."""
    module = f"geo_fault_{kind}"
    root = make_plugin_dist(tmp_path / f"site-{kind}", f"geo-{kind}", "0.3", module, PLUGINS[kind], f"fault_{kind}")
    monkeypatch.syspath_prepend(str(root))
    return f"fault_{kind}"


def load_host() -> tuple[Host, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host = Host()
    set_host(host)
    return host, [str(w.message) for w in caught if issubclass(w.category, PluginLoadWarning)]


def assert_defaults_still_work() -> None:
    """The registry's default encoder/decoder/tokenizer/strategy: a model builds, trains a step, generates."""
    from geometry_os.systems.pixel_llm import create_pixel_llm, generate_caption
    from geometry_os.systems.pixel_llm.resolution import get_component

    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=20, preset="tiny")
    images, ids = torch.rand(2, 3, 32, 32), torch.randint(4, 20, (2, 6))
    assert torch.isfinite(model(images, ids, labels=ids).loss)
    vocab = get_component("tokenizer").load().train(["a red circle"], None)
    out = generate_caption(model, images, max_length=6, tokenizer=vocab, return_dict_in_generate=True)
    assert out.sequences.shape[0] == 2 and len(out.texts) == 2


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("import", "RuntimeError: boom at import"),
        ("exit", "SystemExit: 3"),
        ("register", "ValueError: boom while registering"),
        ("duplicate", "encoder 'vit' is registered by both plugin 'vit' and plugin 'fault_duplicate'"),
        ("override", "ValueError: boom after overriding"),
    ],
)
def test_plugin_failing_to_load_is_named_and_rolled_back(kind, reason, tmp_path, monkeypatch):
    name = install(tmp_path, monkeypatch, kind)
    host, messages = load_host()
    info = host.system("pixel_llm").plugins[name]
    assert info.status == "failed" and reason in info.error, info.error
    assert info.distribution == f"geo-{kind}" and info.components == []
    assert any(f"plugin '{name}' (geo-{kind} 0.3)" in m and reason in m for m in messages), messages
    registry = host.system("pixel_llm").components
    assert "half" not in registry.names("encoder") and "mine" not in registry.names("encoder")
    assert registry.get("encoder", "vit").plugin == "vit"  # the duplicate did not replace the built-in
    assert_defaults_still_work()
    # the CLI keeps working and says so on stderr, one line per broken plugin
    result = CliRunner().invoke(cli, ["pixel-llm", "components", "encoder"])
    assert result.exit_code == 0 and "vit (default)" in result.stdout
    assert_one_line(result.stderr, f"plugin '{name}'", reason)


def test_plugin_failing_to_add_commands_leaves_the_others(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "commands")
    result = CliRunner().invoke(cli, ["pixel-llm", "info", "--preset", "tiny"])
    assert result.exit_code == 0 and "parameters:" in result.stdout
    assert_one_line(result.stderr, "plugin 'fault_commands'", "boom while adding commands")


@pytest.mark.parametrize(
    "encoder, needle",
    [
        (
            "exploding",
            "encoder 'exploding' (plugin 'fault_factory') failed to build: MemoryError: boom inside the factory",
        ),
        ("ghost", "encoder 'ghost' (plugin 'fault_lazy'): cannot load factory 'geo_no_such_module.model:Encoder'"),
        ("stringly", "encoder 'stringly' (plugin 'fault_wrong_type') factory returned str, expected a torch.nn.Module"),
    ],
)
def test_factory_that_fails_or_returns_the_wrong_thing_names_the_plugin(encoder, needle, tmp_path, monkeypatch):
    for kind in ("factory", "lazy", "wrong_type"):
        install(tmp_path, monkeypatch, kind)
    host, messages = load_host()
    assert messages == [] and not host.failures  # registering was fine: the fault is in building
    from geometry_os.systems.pixel_llm import create_pixel_llm

    with pytest.raises(ComponentError) as info:
        create_pixel_llm(vocab_size=20, preset="tiny", encoder=encoder)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert_defaults_still_work()
    # through the CLI: one line, exit 1
    result = CliRunner().invoke(cli, ["pixel-llm", "info", "--preset", "tiny", "--set", f"encoder={encoder}"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert_one_line(result.stderr, needle)


@pytest.mark.parametrize(
    "strategy, needle",
    [
        (
            "broken",
            "decoding_strategy 'broken' (plugin 'fault_decoding') failed while decoding: ZeroDivisionError: boom",
        ),
        (
            "liar",
            "decoding_strategy 'liar' (plugin 'fault_decoding') returned str from decode(), expected a GenerationOutput",
        ),
        (
            "nodecode",
            "decoding_strategy 'nodecode' (plugin 'fault_wrong_type') factory returned object, expected an object with a decode()",
        ),
    ],
)
def test_decoding_strategy_that_fails_names_the_plugin(strategy, needle, tmp_path, monkeypatch):
    from geometry_os.systems.pixel_llm import create_pixel_llm, generate_caption
    from geometry_os.systems.pixel_llm.generation_config import GenerationConfig

    install(tmp_path, monkeypatch, "decoding")
    install(tmp_path, monkeypatch, "wrong_type")
    load_host()
    model = create_pixel_llm(vocab_size=20, preset="tiny")
    model.train()
    with pytest.raises(ComponentError) as info:
        generate_caption(model, torch.rand(2, 3, 32, 32), config=GenerationConfig(strategy=strategy, max_length=5))
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert model.training, "the model's training flag was not restored after the failure"
    assert isinstance(info.value, GeometryOSError)
    assert_defaults_still_work()


def test_decoding_plugin_failure_through_the_caption_command(tmp_path, monkeypatch):
    from reliability_support import make_checkpoint, write_scene

    install(tmp_path, monkeypatch, "decoding")
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    image = write_scene(tmp_path / "a.png")
    result = CliRunner().invoke(
        cli, ["pixel-llm", "caption", str(image), "--checkpoint", str(checkpoint), "--strategy", "broken"]
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert_one_line(result.stderr, "plugin 'fault_decoding'", "boom inside a decoding step")
    fine = CliRunner().invoke(cli, ["pixel-llm", "caption", str(image), "--checkpoint", str(checkpoint)])
    assert fine.exit_code == 0 and fine.stdout.startswith(str(image)), fine.output


def test_strict_mode_turns_each_load_failure_into_one_line(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "register")
    result = CliRunner().invoke(cli, ["pixel-llm", "components"], env={"GEO_OS_STRICT_PLUGINS": "1"})
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert_one_line(result.stderr, "plugin 'fault_register'", "boom while registering")
    top = CliRunner().invoke(cli, ["-h"], env={"GEO_OS_STRICT_PLUGINS": "1"})  # help loads no plugin
    assert top.exit_code == 0 and "pixel-llm" in top.stdout and "Pixel LLM" in top.stdout and not top.stderr
