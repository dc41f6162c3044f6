"""The host: registry, built-in and third-party plugins, failures, duplicates, disabling, system calls."""

from __future__ import annotations

import textwrap

import pytest
from conftest import TOY_MODEL, make_plugin_dist

from geometry_os.errors import ComponentError, ConfigError, GeometryOSError, PluginError, RegistryError
from geometry_os.host import Host, PluginLoadWarning, default_registry_path, read_registry, set_host
from geometry_os.systems.pixel_llm.config import PixelLLMConfig
from geometry_os.systems.pixel_llm.resolution import resolve_model

DEFAULT_COMPONENTS = {
    "encoder": {"vit"},
    "decoder": {"xattn"},
    "tokenizer": {"simple", "bpe", "hf"},
    "dataset": {"captions", "shapes", "json", "jsonl", "coco", "karpathy", "flickr", "imagefolder", "webdataset"},
    "decoding_strategy": {"greedy", "sample", "beam"},
    "trainer": {"amp"},
}


def components(host: Host, kind: str) -> set[str]:
    return set(host.system("pixel_llm").components.names(kind))


def test_registry_lists_every_builtin_and_they_all_load():
    host = Host(entry_points=False)
    registry = read_registry(default_registry_path())
    assert set(registry.plugins) == {p.name for p in host.plugins}
    failed = {p.name: p.error for p in host.plugins if p.error}
    assert failed == {}
    for kind, names in DEFAULT_COMPONENTS.items():
        assert names <= components(host, kind), kind


def test_builtin_plugin_info_records_source_version_hooks_components():
    host = Host(entry_points=False)
    vit = host.system("pixel_llm").plugins["vit"]
    assert vit.source == "builtin" and vit.distribution == "geometry-os" and vit.version
    assert vit.hooks == ["register_encoders"]
    assert vit.components == ["encoder:vit"]


def test_third_party_entry_point_plugin_is_listed_and_buildable(toy_plugin):
    host = Host()
    set_host(host)
    toy = host.system("pixel_llm").plugins["toy"]
    assert (toy.source, toy.distribution, toy.version, toy.status) == (
        "entry point",
        "geo-toy-plugin",
        "1.2.3",
        "loaded",
    )
    assert toy.components == ["encoder:toy"]
    config = PixelLLMConfig(**TOY_MODEL)
    import torch

    from geometry_os.systems.pixel_llm import PixelLLM

    model = PixelLLM(config)
    assert type(model.encoder).__name__ == "ToyEncoder"
    out = model(torch.rand(2, 3, 32, 32), torch.randint(0, 20, (2, 5)))
    assert out.logits.shape == (2, 5, 20)


BROKEN_IMPORT = "raise RuntimeError('boom at import')\n"


def test_plugin_failing_on_import_is_recorded_and_the_rest_works(tmp_path, monkeypatch):
    root = make_plugin_dist(tmp_path, "geo-broken", "0.1", "geo_broken", BROKEN_IMPORT, "broken")
    monkeypatch.syspath_prepend(str(root))
    with pytest.warns(PluginLoadWarning, match="plugin 'broken' .*geo-broken 0.1.*boom at import"):
        host = Host()
    broken = host.system("pixel_llm").plugins["broken"]
    assert broken.status == "failed" and "RuntimeError: boom at import" in broken.error
    assert DEFAULT_COMPONENTS["encoder"] <= components(host, "encoder")
    with pytest.raises(PluginError, match="plugin 'broken'.*boom at import"):
        Host(strict=True)
    monkeypatch.setenv("GEO_OS_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken"):
        Host()


RAISES_IN_REGISTER = textwrap.dedent("""
    from geometry_os.systems.pixel_llm.hookspecs import hookimpl

    @hookimpl
    def register_encoders(register):
        register("half", lambda cfg: None)
        raise ValueError("registration blew up")
""")


def test_plugin_raising_during_registration_leaves_no_components(tmp_path, monkeypatch):
    root = make_plugin_dist(tmp_path, "geo-half", "2.0", "geo_half", RAISES_IN_REGISTER, "half")
    monkeypatch.syspath_prepend(str(root))
    with pytest.warns(PluginLoadWarning, match="registration blew up"):
        host = Host()
    assert "half" not in components(host, "encoder")
    assert host.system("pixel_llm").plugins["half"].status == "failed"


WRONG_SIGNATURE = textwrap.dedent("""
    from geometry_os.systems.pixel_llm.hookspecs import hookimpl

    @hookimpl
    def register_encoders(register, extra_argument):
        pass
""")
UNKNOWN_HOOK = textwrap.dedent("""
    from geometry_os.systems.pixel_llm.hookspecs import hookimpl

    @hookimpl
    def register_spaceships(register):
        pass
""")


@pytest.mark.parametrize(
    "module,source,needle",
    [
        ("geo_bad_signature", WRONG_SIGNATURE, "extra_argument"),
        ("geo_unknown_hook", UNKNOWN_HOOK, "register_spaceships"),
    ],
)
def test_invalid_hookimpls_are_refused_naming_the_plugin(tmp_path, monkeypatch, module, source, needle):
    root = make_plugin_dist(tmp_path, "geo-bad-hook", "0.3", module, source, "badhook")
    monkeypatch.syspath_prepend(str(root))
    with pytest.warns(PluginLoadWarning, match="plugin 'badhook'"):
        host = Host()
    info = host.system("pixel_llm").plugins["badhook"]
    assert info.status == "failed" and needle in info.error
    assert not host.system("pixel_llm").pm.has_plugin("badhook")


DUPLICATE = textwrap.dedent("""
    from geometry_os.systems.pixel_llm.hookspecs import hookimpl

    @hookimpl
    def register_encoders(register):
        register("vit", lambda cfg: None)
""")
OVERRIDE = DUPLICATE.replace("lambda cfg: None)", 'lambda: "mine", override=True)')


def test_duplicate_component_names_both_plugins(tmp_path, monkeypatch):
    root = make_plugin_dist(tmp_path, "geo-dup", "1.0", "geo_dup", DUPLICATE, "dup")
    monkeypatch.syspath_prepend(str(root))
    with pytest.warns(PluginLoadWarning) as record:
        host = Host()
    message = " ".join(str(w.message) for w in record)
    assert "encoder 'vit'" in message and "plugin 'vit'" in message and "plugin 'dup'" in message
    assert host.system("pixel_llm").components.get("encoder", "vit").plugin == "vit"
    with pytest.raises(PluginError, match="plugin 'vit' and plugin 'dup'"):
        Host(strict=True)


def test_explicit_override_replaces_a_component(tmp_path, monkeypatch):
    root = make_plugin_dist(tmp_path, "geo-over", "1.0", "geo_over", OVERRIDE, "over")
    monkeypatch.syspath_prepend(str(root))
    host = Host(strict=True)
    component = host.system("pixel_llm").components.get("encoder", "vit")
    assert component.plugin == "over" and component.build() == "mine"


def test_disabling_a_default_plugin_removes_its_components(monkeypatch):
    monkeypatch.setenv("GEO_OS_DISABLE_PLUGINS", "bpe, decoding")
    host = Host()
    assert "bpe" not in components(host, "tokenizer") and "simple" in components(host, "tokenizer")
    assert components(host, "decoding_strategy") == set()
    assert host.system("pixel_llm").plugins["bpe"].status == "disabled"
    with pytest.raises(ComponentError, match="unknown tokenizer 'bpe'; registered tokenizers: simple"):
        host.system("pixel_llm").components.get("tokenizer", "bpe")


def test_user_registry_can_disable_plugins_and_is_validated(tmp_path):
    text = default_registry_path().read_text()
    user = tmp_path / "registry.toml"
    user.write_text(
        text.replace('[plugins.bpe]\nsystem = "pixel_llm"', '[plugins.bpe]\nenabled = false\nsystem = "pixel_llm"')
    )
    host = Host(user, entry_points=False)
    assert host.system("pixel_llm").plugins["bpe"].status == "disabled"
    bad = tmp_path / "bad.toml"
    bad.write_text(text + '\n[plugins.extra]\nsystem = "pixel_llm"\nmodule = "x"\ncolour = "red"\n')
    with pytest.raises(RegistryError, match=r"bad.toml: plugins.extra.colour: Extra inputs are not permitted"):
        Host(bad)
    with pytest.raises(RegistryError, match="registry file not found"):
        Host(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[systems\n")
    with pytest.raises(RegistryError, match="broken.toml: invalid TOML"):
        Host(broken)


def test_unknown_component_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown encoder 'nope'; registered encoders: vit"):
        resolve_model(PixelLLMConfig(encoder="nope"))


def test_system_calls_validate_parameters_and_list_known_calls():
    host = Host(entry_points=False)
    result = host.call("pixel_llm.info", preset="tiny")
    assert result["parameters"]["total"] > 0 and result["config"]["encoder"] == "vit"
    with pytest.raises(GeometryOSError, match="unknown system call 'pixel_llm.nope'; known calls: .*pixel_llm.info"):
        host.call("pixel_llm.nope")
    with pytest.raises(ConfigError, match="pixel_llm.info: colour: Extra inputs are not permitted"):
        host.call("pixel_llm.info", colour="red")


def test_registration_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; from geometry_os.host import Host; h = Host(entry_points=False);"
        "assert not h.failures, h.failures; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_lazy_factory_whose_module_exits_is_a_component_error(tmp_path, monkeypatch):
    from geometry_os.components import Component

    (tmp_path / "geo_quitter.py").write_text("import sys\nsys.exit(4)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    component = Component("encoder", "quitter", "geo_quitter:Encoder", None, "quitting")
    with pytest.raises(
        ComponentError, match=r"encoder 'quitter' \(plugin 'quitting'\): cannot load factory .*SystemExit"
    ):
        component.load()
