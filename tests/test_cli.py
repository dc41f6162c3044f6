"""The geo-os command line: plugin listing, components, info, and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import assert_one_line_error, make_plugin_dist

from geometry_os.cli import cli


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_plugins_lists_builtins_with_all_and_as_json():
    result = run("plugins", "--all", "--json")
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"vit", "xattn", "simple_vocab", "decoding", "commands"} <= set(rows)
    assert rows["vit"]["components"] == ["encoder:vit"] and rows["vit"]["status"] == "loaded"
    assert "No third-party plugins" in run("plugins").output


def test_plugins_shows_a_broken_plugin_and_exits_zero(tmp_path, monkeypatch):
    root = make_plugin_dist(tmp_path, "geo-broken", "0.1", "geo_broken", "raise ImportError('no such lib')\n", "broken")
    monkeypatch.syspath_prepend(str(root))
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert "broken [geo-broken 0.1] (entry point, pixel_llm): failed" in result.output
    assert "ImportError: no such lib" in result.output
    strict = CliRunner().invoke(cli, ["plugins"], env={"GEO_OS_STRICT_PLUGINS": "1"})
    assert_one_line_error(strict, "plugin 'broken'", "no such lib")


def test_third_party_component_is_listed(toy_plugin):
    result = run("pixel-llm", "components", "encoder")
    assert result.exit_code == 0
    assert "vit (default)  [plugin vit]" in result.output and "toy  [plugin toy]" in result.output


def test_components_lists_every_kind_and_rejects_unknown_kind():
    result = run("pixel-llm", "components", "--json")
    kinds = {row["kind"] for row in json.loads(result.stdout)}
    assert kinds == {"encoder", "decoder", "tokenizer", "dataset", "decoding_strategy", "trainer"}
    bad = CliRunner().invoke(cli, ["pixel-llm", "components", "spaceship"])
    assert bad.exit_code == 2 and "unknown kind 'spaceship'" in bad.output
    for plural, member in (("decoding_strategies", "greedy"), ("encoders", "vit")):  # as error messages name them
        result = run("pixel-llm", "components", plural, "--json")
        assert member in {row["name"] for row in json.loads(result.stdout)}


def test_an_existing_file_with_glob_characters_is_a_file_not_a_pattern(tmp_path):
    from geometry_os.errors import GeometryOSError
    from geometry_os.systems.pixel_llm.captioning import expand_image_args

    image = tmp_path / "IMG [1].png"
    image.write_bytes(b"")
    assert expand_image_args([str(image)]) == [image]
    (tmp_path / "a1.png").write_bytes(b"")
    assert expand_image_args([str(tmp_path / "a[0-9].png")]) == [tmp_path / "a1.png"]  # patterns still work
    with pytest.raises(GeometryOSError, match="no file matches"):
        expand_image_args([str(tmp_path / "IMG [2].png")])


def test_info_shows_parameter_count():
    result = run("pixel-llm", "info", "--preset", "small", "--json")
    data = json.loads(result.stdout)
    assert data["config"]["vision_embed_dim"] == 192
    assert 3_000_000 < data["parameters"]["total"] < 6_000_000
    text = run("pixel-llm", "info", "--preset", "tiny").output
    assert "parameters:" in text and "encoder: vit  decoder: xattn" in text


def test_config_errors_are_one_line_naming_the_field(tmp_path):
    typo = tmp_path / "typo.toml"
    typo.write_text("image_sise = 64\n")
    assert_one_line_error(
        CliRunner().invoke(cli, ["pixel-llm", "info", "--config", str(typo)]), "typo.toml", "image_sise"
    )
    assert_one_line_error(
        CliRunner().invoke(cli, ["pixel-llm", "info", "--preset", "tiny", "--set", "patch_size=7"]),
        "patch_size=7",
        "image_size=32",
    )
    assert_one_line_error(
        CliRunner().invoke(cli, ["pixel-llm", "info", "--preset", "tiny", "--set", "vision_num_layers=-2"]),
        "vision_num_layers",
        "-2",
    )
    assert_one_line_error(
        CliRunner().invoke(cli, ["pixel-llm", "info", "--preset", "tiny", "--set", "encoder=nope"]),
        "unknown encoder 'nope'",
        "vit",
    )
    assert_one_line_error(
        CliRunner().invoke(cli, ["pixel-llm", "info", "--config", str(tmp_path / "x.toml")]), "x.toml", "not found"
    )
    bad_json = tmp_path / "c.json"
    bad_json.write_text('{"image_size": 64,}')
    assert_one_line_error(
        CliRunner().invoke(cli, ["pixel-llm", "info", "--config", str(bad_json)]), "c.json:1:", "malformed JSON"
    )
    assert_one_line_error(CliRunner().invoke(cli, ["pixel-llm", "info", "--preset", "huge"]), "unknown preset 'huge'")


def test_real_subprocess_help_is_fast_and_imports_no_torch():
    code = (
        "import sys; from geometry_os.cli import cli\n"
        "try:\n    cli.main(['pixel-llm', '--help'], standalone_mode=False)\nfinally:\n"
        "    print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "components" in out.stdout and out.stdout.strip().endswith("NO-TORCH")


def test_geo_os_console_script_reports_user_error_without_traceback(tmp_path):
    exe = subprocess.run(
        [sys.executable, "-m", "geometry_os.cli", "pixel-llm", "info", "--set", "nope"], capture_output=True, text=True
    )
    assert exe.returncode == 1 and "Traceback" not in exe.stderr
    assert "expected key=value" in exe.stderr


def test_a_bad_registry_is_named_not_reported_as_a_missing_command(tmp_path):
    bad = tmp_path / "registry.toml"
    bad.write_text("[systems\n")
    for registry, needle in (
        (tmp_path / "typo.toml", "typo.toml: registry file not found"),
        (bad, "registry.toml: invalid TOML"),
    ):
        result = CliRunner().invoke(cli, ["--registry", str(registry), "pixel-llm", "info"])
        assert result.exit_code == 1 and needle in result.output and "No such command" not in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
        listing = CliRunner().invoke(cli, ["--registry", str(registry), "-h"])  # help still works
        assert listing.exit_code == 0 and "plugins" in listing.output


def test_ctrl_c_prints_one_line_and_exits_130(monkeypatch, capsys):
    import geometry_os.cli as cli_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "print_plugins", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main(["plugins"])
    assert exit_info.value.code == 130 and "Error: interrupted" in capsys.readouterr().err
    for argv, code in (
        (["--version"], 0),
        (["plugins", "--bogus"], 2),
        (["--registry", "/nope.toml", "pixel-llm", "info"], 1),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli_module.main(argv)
        assert exit_info.value.code == code, argv


def test_a_registry_naming_a_wrong_hookspecs_module_is_one_line(tmp_path):
    for hookspecs, needle in (
        ("geometry_os.systems.pixel_llm.hookspec", "cannot import"),
        ("", "cannot import"),
        ("geometry_os.errors", "defines no COMPONENT_KINDS"),
    ):
        registry = tmp_path / "registry.toml"
        registry.write_text(f'[systems.pixel_llm]\nhookspecs = "{hookspecs}"\n')
        result = CliRunner().invoke(cli, ["--registry", str(registry), "pixel-llm", "info"])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert "systems.pixel_llm.hookspecs: " in result.output and needle in result.output
        assert len(result.output.strip().splitlines()) == 1
