"""The command line's generation edge cases and message forms: --max-length 1 in every strategy,
sampling flags that select sampling or are refused, lengths beyond the model, folder captioning
(--recursive, dot-files), one ``Error:`` / ``Warning:`` form for every diagnostic, a quiet end when
the reader of the output goes away (``| head``), and help text on every option."""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

import click
import pytest
from cli_output import without_dtype_note
from click.testing import CliRunner
from conftest import CAPTION_WORKSPACE_CAPTIONS, caption_workspace, make_plugin_dist
from PIL import Image

from geometry_os.cli import SIGPIPE_STATUS, cli, main, one_line_diagnostics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CAPTIONS = CAPTION_WORKSPACE_CAPTIONS


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A random tiny checkpoint (max_seq_len 32) with a simple vocabulary, a few images and their captions."""
    root = caption_workspace(tmp_path_factory.mktemp("gencli"))
    (root / "data.json").write_text(json.dumps([{"image": f"{i}.png", "caption": CAPTIONS[i]} for i in range(3)]))
    return root


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="geo-os")


def caption(ws: Path, *args: str):
    return invoke("pixel-llm", "caption", ws / "0.png", ws / "1.png", "--checkpoint", ws / "ckpt", *args)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def err_lines(stderr: str) -> list[str]:
    """Non-blank lines of stderr, without the ``--dtype auto`` note (printed where bf16 is native)."""
    return lines(without_dtype_note(stderr))


# ---- --max-length 1, sampling flags, lengths beyond the model --------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--strategy", "sample", "--seed", "1"], ["--num-beams", "3"]])
def test_max_length_one_gives_empty_captions_in_every_strategy(ws, flags):
    result = caption(ws, "--max-length", "1", "--json", *flags)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["caption"], r["score"], r["penalised_score"]) for r in rows] == [("", 0.0, 0.0)] * 2


def test_a_sampling_flag_selects_sampling(ws):
    chosen = caption(ws, "--temperature", "5", "--seed", "1", "--json")
    explicit = caption(ws, "--strategy", "sample", "--temperature", "5", "--seed", "1", "--json")
    greedy = caption(ws, "--json")
    assert chosen.exit_code == explicit.exit_code == greedy.exit_code == 0, chosen.output
    assert json.loads(chosen.stdout) == json.loads(explicit.stdout) != json.loads(greedy.stdout)


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--strategy", "greedy", "--top-k", "5"],
            "Error: --top-k only affects sampling, which --strategy greedy does not do",
        ),
        (
            ["--num-beams", "3", "--seed", "1", "--top-p", "0.9"],
            "Error: --top-p, --seed only affect sampling, which --num-beams 3 does not do",
        ),
        (
            ["--strategy", "beam", "--temperature", "0.7"],
            "Error: --temperature only affects sampling, which --strategy beam does not do",
        ),
    ],
)
def test_sampling_flags_with_greedy_or_beam_are_one_line_usage_errors(ws, flags, message):
    result = caption(ws, *flags)
    assert result.exit_code == 2 and err_lines(result.stderr) == [err_lines(result.stderr)[0]], result.output
    assert err_lines(result.stderr)[0].startswith(message) and not result.stdout


def test_eval_sweep_refuses_the_flags_it_would_ignore(ws):
    result = invoke(
        "pixel-llm",
        "eval",
        "--checkpoint",
        ws / "ckpt",
        "--data",
        ws / "data.json",
        "--sweep",
        "--temperature",
        "0.7",
        "--num-beams",
        "2",
    )
    assert result.exit_code == 2
    assert err_lines(result.stderr) == [
        "Error: --sweep compares its own decoding settings; --num-beams, --temperature would be ignored (only "
        "--max-length and --seed apply to it) (see 'geo-os pixel-llm eval -h')"
    ]


def test_a_length_beyond_max_seq_len_is_one_warning_line(ws):
    result = caption(ws, "--max-length", "1000")
    assert result.exit_code == 0 and len(lines(result.stdout)) == 2
    assert err_lines(result.stderr) == [
        "Warning: max_length=1000 is beyond the model's max_seq_len=32: captions stop at 32 tokens (<bos> included)"
    ]
    assert err_lines(caption(ws, "--max-length", "32").stderr) == []


# ---- folders -------------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path) -> Path:
    for name in ("a.png", ".hidden.png", "sub/b.png", "sub/deeper/c.png", ".git/d.png", "notes.txt"):
        path = tmp_path / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".png"):
            Image.new("RGB", (8, 8), (90, 90, 200)).save(path)
        else:
            path.write_text("not an image")
    return tmp_path / "photos"


def captioned(result) -> list[str]:
    return [line.split("\t")[0] for line in lines(result.stdout)]


def test_a_folder_skips_dot_files_and_names_the_sub_folders_it_did_not_search(ws, folder):
    result = invoke("pixel-llm", "caption", folder, "--checkpoint", ws / "ckpt")
    assert result.exit_code == 0, result.output
    assert captioned(result) == [str(folder / "a.png")]
    assert err_lines(result.stderr) == [f"Warning: {folder}: 1 sub-folder(s) not searched (sub; use --recursive)"]


def test_recursive_captions_the_sub_folders_too(ws, folder):
    result = invoke("pixel-llm", "caption", folder, "-r", "--checkpoint", ws / "ckpt")
    assert result.exit_code == 0 and err_lines(result.stderr) == [], result.output
    assert captioned(result) == [str(folder / p) for p in ("a.png", "sub/b.png", "sub/deeper/c.png")]
    named = invoke("pixel-llm", "caption", folder / ".hidden.png", "--checkpoint", ws / "ckpt")
    assert captioned(named) == [str(folder / ".hidden.png")]  # named explicitly: captioned


def test_a_folder_whose_images_are_all_in_sub_folders(ws, folder):
    result = invoke("pixel-llm", "caption", folder / "sub" / "..", "--checkpoint", ws / "ckpt")  # has a.png
    assert result.exit_code == 0
    (folder / "a.png").unlink()
    result = invoke("pixel-llm", "caption", folder, "--checkpoint", ws / "ckpt")
    assert result.exit_code == 1 and len(err_lines(result.stderr)) == 1
    assert err_lines(result.stderr)[0].startswith(f"Error: {folder}: no images in this folder")
    assert err_lines(result.stderr)[0].endswith("; 1 sub-folder(s) not searched (sub; use --recursive)")


def test_the_caption_system_call_takes_recursive(ws, folder):
    from geometry_os.host import Host

    rows = Host().call(
        "pixel_llm.caption",
        checkpoint=str(ws / "ckpt"),
        images=[str(folder)],
        recursive=True,
        generation={"max_length": 4},
    )
    assert [r["image"] for r in rows] == [str(folder / p) for p in ("a.png", "sub/b.png", "sub/deeper/c.png")]


# ---- one message form ----------------------------------------------------------------------------------


def test_python_warnings_and_log_records_print_as_one_warning_line(capsys):
    with one_line_diagnostics():
        warnings.warn("first line\n  second line", UserWarning, stacklevel=1)
        logging.getLogger("geometry_os.systems.pixel_llm.data").warning("data.json: skipped 1 of 3 entries")
        logging.getLogger("geometry_os.plugins.x").error("bad thing")
    assert capsys.readouterr().err.splitlines() == [
        "Warning: first line second line",
        "Warning: data.json: skipped 1 of 3 entries",
        "Error: bad thing",
    ]


def test_per_image_errors_and_the_hosts_plugin_warnings_use_the_same_prefixes(ws, tmp_path, monkeypatch):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = invoke("pixel-llm", "caption", ws / "0.png", broken, "--checkpoint", ws / "ckpt")
    assert result.exit_code == 1 and err_lines(result.stderr) == [
        f"Error: {broken}: cannot identify image file (not an image, or a format Pillow cannot read)"
    ]
    root = make_plugin_dist(
        tmp_path / "dist", "geo-broken", "0.1", "geo_broken", "raise ImportError('no lib')\n", "broken"
    )
    monkeypatch.syspath_prepend(str(root))
    result = invoke("pixel-llm", "components")
    assert result.exit_code == 0
    assert [line for line in err_lines(result.stderr)] == [
        "Warning: plugin 'broken' (geo-broken 0.1) failed to load: ImportError: no lib"
    ]


def test_the_vocab_size_notice_is_a_warning_line(capsys):
    from geometry_os.systems.pixel_llm.config import preset_config
    from geometry_os.systems.pixel_llm.resolution import get_component
    from geometry_os.systems.pixel_llm.workflows import fit_vocabulary

    vocab = get_component("tokenizer", "simple").load().train(CAPTIONS, None)
    with one_line_diagnostics():  # how the command line shows the workflow's notes
        config = fit_vocabulary(preset_config("tiny"), vocab, quiet=False)
    assert config.vocab_size == len(vocab)
    assert capsys.readouterr().err.splitlines() == [
        f"Warning: vocab_size set to {len(vocab)}, the tokenizer's size (the config said 64)"
    ]


def test_no_other_diagnostic_prefix_is_left_in_the_sources():
    root = Path(__file__).resolve().parents[1]
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for folder in ("geometry_os", "plugins")
        for path in sorted((root / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "geo-os: error" in line or "geo-os: warning" in line or "geo-os: interrupted" in line
    ]
    assert offenders == [], "use geometry_os.cli.echo_error / echo_warning (Error: / Warning:)"


def all_options(group: click.Group, path: list[str]):
    ctx = click.Context(group, info_name=path[-1])
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from all_options(command, [*path, name])
        for param in command.params:
            if isinstance(param, click.Option):
                yield " ".join([*path, name]), param


def test_every_option_of_every_command_has_help_text():
    options = list(all_options(cli, ["geo-os"]))
    assert len({command for command, _ in options}) >= 10  # the pixel-llm group's commands are walked
    missing = [
        f"{command} {'/'.join(option.opts)}" for command, option in options if not option.help and not option.hidden
    ]
    assert missing == []


# ---- | head ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["pixel-llm", "caption", "--help"],
        ["plugins", "--all"],
        ["pixel-llm", "components"],
        ["pixel-llm", "info", "--preset", "tiny"],
        ["pixel-llm", "caption", "{ws}/0.png", "{ws}/1.png", "--checkpoint", "{ws}/ckpt", "--batch-size", "1"],
        ["pixel-llm", "eval", "--checkpoint", "{ws}/ckpt", "--data", "{ws}/data.json"],
        ["pixel-llm", "lint-data", "{ws}/data.json"],
    ],
    ids=lambda args: " ".join(args[:3]),
)
def test_a_closed_stdout_ends_the_command_quietly(ws, args, monkeypatch, capsys):
    """`geo-os ... | head`: once head has gone, the next write fails with EPIPE. The command ends as
    Unix tools do (no message, status 141), and the final flush cannot complain either."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    stdout = open(write_end, "w")
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main([a.format(ws=ws) for a in args])  # the console script's entry point
        stdout.flush()  # as the interpreter does at exit: must not raise
    finally:
        monkeypatch.undo()
        stdout.close()
    assert exit_info.value.code == SIGPIPE_STATUS
    assert err_lines(capsys.readouterr().err) == []


def test_a_pattern_matching_folders_names_them_or_searches_them_with_recursive(ws, folder):
    pattern = str(folder / "[as]*")  # a.png and sub/ (a pattern's files are taken as named, notes.txt too)
    plain = invoke("pixel-llm", "caption", pattern, "--checkpoint", ws / "ckpt")
    assert plain.exit_code == 0 and captioned(plain) == [str(folder / "a.png")], plain.output
    assert err_lines(plain.stderr) == [f"Warning: {pattern}: 1 matching folder(s) not searched (sub; use --recursive)"]
    deep = invoke("pixel-llm", "caption", pattern, "-r", "--checkpoint", ws / "ckpt")
    assert captioned(deep) == [str(folder / p) for p in ("a.png", "sub/b.png", "sub/deeper/c.png")]


def test_rerank_flag_reorders_the_beam_and_needs_one(ws):
    refused = caption(ws, "--rerank", "word_dropout")
    assert refused.exit_code == 2 and "--rerank" in refused.output and "--num-beams" in refused.output
    assert "Traceback" not in refused.output
    done = caption(ws, "--rerank", "word_dropout", "--num-beams", "3", "--json")
    assert done.exit_code == 0, done.output
    rows = json.loads(done.stdout)
    assert len(rows) == 2 and all(isinstance(r["rerank_score"], float) and r["rerank_score"] <= 0 for r in rows)
    plain = json.loads(caption(ws, "--num-beams", "3", "--json").stdout)
    assert all("rerank_score" not in r for r in plain)  # only what re-ranking computed
