"""Hostile checkpoint files: code-running pickles, forged safetensors headers, absurd configs, symlinks out of
the folder. Every reader (``PixelLLM.from_pretrained``, the trainer's resume, ``geo-os pixel-llm caption``
and ``train --resume``) refuses them with one line naming the file, runs no code, allocates nothing
unbounded and never crashes with a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from reliability_support import (
    Measured,
    assert_one_line,
    child_env,
    copy_checkpoint,
    evil_pickle,
    evil_torch_file,
    geo_os_command,
    safetensors_bytes,
    write_scene,
)

from geometry_os.cli import cli
from geometry_os.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

FILES = ("model.safetensors", "config.json", "tokenizer.json", "trainer_state.json", "optimizer.pt")
# Which files each reader opens: the others it must leave alone (and then succeed).
READS = {
    "from_pretrained": {"model.safetensors", "config.json", "tokenizer.json"},
    "caption_cli": {"model.safetensors", "config.json", "tokenizer.json"},
    "trainer_resume": set(FILES),
    "train_cli": set(FILES),
}


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A trained step folder (all five files), its data, and an image to caption."""
    root = tmp_path_factory.mktemp("hostile")
    runner = CliRunner()
    made = runner.invoke(
        cli,
        [
            "pixel-llm",
            "make-shapes",
            "--out",
            str(root / "data"),
            "--n",
            "12",
            "--seed",
            "2",
            "--image-size",
            "32",
            "--splits",
            "train=1.0",
        ],
    )
    assert made.exit_code == 0, made.output
    trained = runner.invoke(
        cli,
        [
            "pixel-llm",
            "train",
            "--preset",
            "tiny",
            "--data",
            str(root / "data" / "train.json"),
            "--out",
            str(root / "ckpt"),
            "--quiet",
            "--set",
            "trainer.max_steps=2",
            "--set",
            "trainer.checkpoint_interval=2",
            "--set",
            "trainer.use_amp=false",
            "--set",
            "trainer.batch_size=4",
            "--set",
            "trainer.warmup_steps=1",
        ],
    )
    assert trained.exit_code == 0, trained.output
    step = root / "ckpt" / "step-00000002"
    assert {p.name for p in step.iterdir()} >= set(FILES)
    return {"root": root, "step": step, "data": root / "data" / "train.json", "image": write_scene(root / "img.png")}


@pytest.fixture
def case_dir(tmp_path, workspace):
    """A fresh copy of the trained step folder (inside its own checkpoint dir) for one case to spoil."""

    def make(name: str = "case") -> Path:
        return copy_checkpoint(workspace["step"], tmp_path / name / "step-00000002")

    return make


# ---- the readers --------------------------------------------------------------------------------


def read_with(reader: str, folder: Path, workspace: dict[str, Path], tmp_path: Path) -> tuple[bool, str]:
    """(refused, message). CLI readers must print exactly one line and no traceback when they refuse."""
    if reader == "from_pretrained":
        from geometry_os.systems.pixel_llm import PixelLLM

        try:
            PixelLLM.from_pretrained(folder)
        except CheckpointError as exc:
            return True, str(exc)
        return False, ""
    if reader == "trainer_resume":
        return trainer_resume(folder, workspace)
    if reader == "caption_cli":
        args = ["pixel-llm", "caption", str(workspace["image"]), "--checkpoint", str(folder)]
    else:
        args = [
            "pixel-llm",
            "train",
            "--resume",
            str(folder),
            "--data",
            str(workspace["data"]),
            "--quiet",
            "--out",
            str(tmp_path / "resumed-out"),
            "--set",
            "trainer.max_steps=3",
            "--set",
            "trainer.use_amp=false",
            "--set",
            "trainer.batch_size=4",
        ]
    result = CliRunner().invoke(cli, args)
    if result.exit_code == 0:
        return False, ""
    assert isinstance(result.exception, SystemExit), f"{reader} crashed: {result.exception!r}\n{result.output}"
    return True, assert_one_line(result.stderr)


def trainer_resume(folder: Path, workspace: dict[str, Path]) -> tuple[bool, str]:
    """``PixelLLMTrainer.load_checkpoint`` into a fresh model of the pristine checkpoint's shape."""
    from geometry_os.plugins.amp_trainer.trainer import PixelLLMTrainer
    from geometry_os.systems.pixel_llm import PixelLLM
    from geometry_os.systems.pixel_llm.config import TrainerConfig
    from geometry_os.systems.pixel_llm.data import ImageTextDataset

    pristine, tokenizer = PixelLLM.from_pretrained(workspace["step"])
    model = PixelLLM(pristine.config)
    dataset = ImageTextDataset(workspace["data"], tokenizer=tokenizer, config={"image_size": 32})
    config = TrainerConfig(use_amp=False, batch_size=4, max_steps=3, checkpoint_dir=str(folder.parent / "out"))
    loader = PixelLLMTrainer.make_dataloader(dataset, 4)
    trainer = PixelLLMTrainer(model, config, loader, None, tokenizer=tokenizer, quiet=True)
    try:
        trainer.load_checkpoint(folder)
    except CheckpointError as exc:
        return True, str(exc)
    return False, ""


def assert_refused(refused: bool, message: str, *needles: str) -> None:
    assert refused, "the hostile file was accepted"
    assert "\n" not in message.strip(), message
    assert "Traceback" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# ---- code-running pickles -----------------------------------------------------------------------


@pytest.mark.parametrize("reader", sorted(READS))
@pytest.mark.parametrize("file", FILES)
def test_pickle_that_runs_code_is_never_executed(reader, file, case_dir, workspace, tmp_path):
    marker = tmp_path / "PWNED"
    folder = case_dir()
    payload = evil_torch_file(marker) if file == "optimizer.pt" else evil_pickle(marker, system=True)
    (folder / file).write_bytes(payload)
    refused, message = read_with(reader, folder, workspace, tmp_path)
    assert not marker.exists(), f"{reader} ran code from {file}"
    if file in READS[reader]:
        assert_refused(refused, message, file)
    else:
        assert not refused, f"{reader} does not need {file} but refused: {message}"


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("file", FILES)
def test_raw_pickles_of_every_protocol_are_refused_by_resume(protocol, file, case_dir, workspace, tmp_path):
    marker = tmp_path / "PWNED"
    folder = case_dir()
    (folder / file).write_bytes(evil_pickle(marker, protocol=protocol))
    refused, message = read_with("trainer_resume", folder, workspace, tmp_path)
    assert not marker.exists()
    assert_refused(refused, message, file)


def test_refusing_a_pickled_optimizer_says_why_and_warns_nothing(case_dir, workspace, tmp_path):
    """One line on stderr (no torch warning about pickle protocols), and no advice to disable weights_only."""
    folder = case_dir()
    (folder / "optimizer.pt").write_bytes(evil_pickle(tmp_path / "PWNED", protocol=4, system=True))
    refused, line = read_with("train_cli", folder, workspace, tmp_path)
    assert_refused(refused, line, "optimizer.pt", "refused")
    (folder / "optimizer.pt").write_bytes(evil_torch_file(tmp_path / "PWNED"))
    refused, line = read_with("train_cli", folder, workspace, tmp_path)
    assert_refused(refused, line, "optimizer.pt", "refused")
    assert "weights_only` set to `False`" not in line and "posix.system" in line


@pytest.mark.parametrize(
    "where, value, needle",
    [
        ("group", {"lr": "a"}, "param_groups[0].lr must be a number"),
        ("group", {"betas": [0.9]}, "param_groups[0].betas must be two numbers"),
        ("group", {"eps": None}, "param_groups[0].eps must be a number"),
        ("scheduler", {"last_epoch": "x"}, "scheduler.last_epoch must be an integer"),
    ],
)
def test_forged_optimizer_values_are_refused_at_load_not_mid_step(where, value, needle, case_dir, workspace, tmp_path):
    """weights_only lets plain values through; those the step computes with are checked when loading."""
    import torch

    folder = case_dir()
    tensors = torch.load(folder / "optimizer.pt", weights_only=True)
    (tensors["optimizer"]["param_groups"][0] if where == "group" else tensors["scheduler"]).update(value)
    torch.save(tensors, folder / "optimizer.pt")
    for reader in ("trainer_resume", "train_cli"):
        refused, message = read_with(reader, folder, workspace, tmp_path)
        assert_refused(refused, message, "optimizer.pt", needle)


# ---- forged safetensors headers -----------------------------------------------------------------

F32_4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
FORGED = {
    "header-longer-than-file": safetensors_bytes({"a": F32_4}, b"\0" * 16, header_length=10**6),
    "header-length-2**63": safetensors_bytes({"a": F32_4}, b"\0" * 16, header_length=2**63 - 1),
    "header-length-zero": safetensors_bytes({}, b"", header_length=0),
    "huge-shape-small-offsets": safetensors_bytes(
        {"decoder.wte.weight": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 16]}}, b"\0" * 16
    ),
    "offsets-beyond-file": safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [2**28], "data_offsets": [0, 2**30]}}, b"\0" * 16
    ),
    "overlapping-offsets": safetensors_bytes(
        {"a": F32_4, "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24
    ),
    "negative-offset": safetensors_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}}, b"\0" * 16),
    "unknown-dtype": safetensors_bytes({"a": {"dtype": "PWN", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16),
    "header-not-json": b"\x10\0\0\0\0\0\0\0" + b"{not json at all" + b"\0" * 16,
    "empty-file": b"",
    "matching-names-wrong-shapes": None,  # built from the real header below
}


def forged_matching_names(folder: Path) -> bytes:
    """The real tensor names, each declared as a [1] float: a valid file that does not fit the config."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        names = sorted(f.keys())
    header = {name: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, name in enumerate(names)}
    return safetensors_bytes(header, b"\0" * (4 * len(names)))


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_safetensors_header_is_refused(case, case_dir, workspace, tmp_path):
    folder = case_dir()
    data = FORGED[case] if FORGED[case] is not None else forged_matching_names(folder)
    (folder / "model.safetensors").write_bytes(data)
    for reader in ("from_pretrained", "caption_cli"):
        refused, message = read_with(reader, folder, workspace, tmp_path)
        assert_refused(refused, message, "model.safetensors")


# ---- configs --------------------------------------------------------------------------------------

ABSURD = {
    "unknown-encoder": {"encoder": "spaceship"},
    "unknown-decoder": {"decoder": "../../xattn"},
    "vision_embed_dim=10**9": {"vision_embed_dim": 10**9},
    "text_embed_dim=10**9": {"text_embed_dim": 10**9},
    "vocab_size=10**12": {"vocab_size": 10**12},
    "max_seq_len=10**12": {"max_seq_len": 10**12},
    "image_size=2**40": {"image_size": 2**40, "patch_size": 1},
    "vision_num_layers=10**7": {"vision_num_layers": 10**7},
    "text_num_layers=10**7": {"text_num_layers": 10**7},
    "more-layers-than-the-file": {"text_num_layers": 64},
    "wider-mlp-than-the-file": {"mlp_ratio": 4096.0},
    "negative-size": {"vision_embed_dim": -32},
    "size-as-string": {"text_embed_dim": "32; rm -rf /"},
}
NEEDLES = {"unknown-encoder": "spaceship", "unknown-decoder": "../../xattn"}


def spoil_config(folder: Path, fields: dict) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data["model"].update(fields)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "text, needle",
    [
        ('{"format": "pixel-llm", "format_version": "1", "model": {}}', "format_version must be an integer"),
        ('{"format": "pixel-llm", "format_version": null, "model": {}}', "format_version must be an integer"),
        ('{"format": "pixel-llm", "format_version": ' + "9" * 5000 + ', "model": {}}', "malformed JSON"),
    ],
)
def test_malformed_config_header_is_refused_in_one_line(text, needle, case_dir, workspace, tmp_path):
    folder = case_dir()
    (folder / "config.json").write_text(text)
    for reader in ("from_pretrained", "caption_cli"):
        refused, message = read_with(reader, folder, workspace, tmp_path)
        assert_refused(refused, message, "config.json", needle)


@pytest.mark.parametrize("case", sorted(ABSURD))
def test_absurd_config_is_refused_before_the_model_is_allocated(case, case_dir, workspace, tmp_path, monkeypatch):
    """Refused with a message naming config.json or the weights file, and no real (non-meta) model built."""
    import torch

    from geometry_os.systems.pixel_llm import modeling as model_module

    real_builds = []
    original_init = model_module.PixelLLM.__init__

    def tracking_init(self, *args, **kwargs):
        if torch.get_default_device().type != "meta":
            real_builds.append(args)
        return original_init(self, *args, **kwargs)

    monkeypatch.setattr(model_module.PixelLLM, "__init__", tracking_init)
    folder = case_dir()
    spoil_config(folder, ABSURD[case])
    refused, message = read_with("from_pretrained", folder, workspace, tmp_path)
    assert_refused(refused, message, NEEDLES.get(case, ""))
    assert "config.json" in message or "model.safetensors" in message, message
    assert not real_builds, f"a real model was built before refusing: {message}"


def test_oversized_json_files_are_refused_unread(case_dir, workspace, tmp_path):
    """A (sparse) 1 GiB config.json / tokenizer.json / trainer_state.json is refused from its size alone."""
    for file in ("config.json", "tokenizer.json", "trainer_state.json"):
        folder = case_dir(file)
        with open(folder / file, "r+b") as f:
            f.truncate(2**30)
        refused, message = read_with("trainer_resume", folder, workspace, tmp_path)
        assert_refused(refused, message, file)


@pytest.mark.parametrize("file", ["config.json", "tokenizer.json", "trainer_state.json"])
def test_deeply_nested_json_is_refused(file, case_dir, workspace, tmp_path):
    """100000 nested brackets: json.loads would raise RecursionError, which no reader may let through."""
    folder = case_dir()
    (folder / file).write_text("[" * 100_000 + "]" * 100_000)
    for reader in READS:
        if file in READS[reader]:
            refused, message = read_with(reader, folder, workspace, tmp_path)
            assert_refused(refused, message, file)


# ---- paths out of the folder ----------------------------------------------------------------------


def elsewhere(tmp_path: Path, workspace: dict[str, Path], file: str) -> Path:
    """A perfectly valid copy of ``file`` outside the checkpoint folder."""
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    target = outside / file
    shutil.copy2(workspace["step"] / file, target)
    return target


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("target", ["/etc/passwd", "valid-file-elsewhere"])
def test_symlink_out_of_the_checkpoint_folder_is_refused(file, target, case_dir, workspace, tmp_path):
    folder = case_dir()
    (folder / file).unlink()
    os.symlink(target if target.startswith("/") else elsewhere(tmp_path, workspace, file), folder / file)
    for reader in READS:
        if file not in READS[reader]:
            continue
        refused, message = read_with(reader, folder, workspace, tmp_path)
        assert_refused(refused, message, file, "outside the checkpoint folder")


def test_symlink_inside_the_folder_is_fine(case_dir, workspace, tmp_path):
    folder = case_dir()
    (folder / "tokenizer.json").rename(folder / "vocab-v1.json")
    os.symlink("vocab-v1.json", folder / "tokenizer.json")
    assert read_with("from_pretrained", folder, workspace, tmp_path) == (False, "")


@pytest.mark.parametrize("name", ["../outside/tokenizer.json", "/etc/passwd", "sub/tokenizer.json"])
def test_tokenizer_entry_naming_a_path_is_refused(name, case_dir, workspace, tmp_path):
    folder = case_dir()
    elsewhere(tmp_path, workspace, "tokenizer.json")
    data = json.loads((folder / "config.json").read_text())
    data["tokenizer"]["file"] = name
    (folder / "config.json").write_text(json.dumps(data))
    refused, message = read_with("from_pretrained", folder, workspace, tmp_path)
    assert_refused(refused, message)
    assert "config.json" in message or name in message, message


@pytest.mark.parametrize("pointer", ['{"checkpoint": "../../etc"}', '{"checkpoint": "/etc"}', "[1, 2]", "\x80\x81"])
def test_latest_pointer_out_of_the_checkpoint_dir_is_refused(pointer, case_dir, workspace, tmp_path):
    folder = case_dir()
    (folder.parent / "latest").write_bytes(pointer.encode("latin-1"))
    result = CliRunner().invoke(
        cli,
        [
            "pixel-llm",
            "train",
            "--resume",
            "latest",
            "--out",
            str(folder.parent),
            "--data",
            str(workspace["data"]),
            "--quiet",
            "--set",
            "trainer.max_steps=3",
            "--set",
            "trainer.use_amp=false",
        ],
    )
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    assert_one_line(result.stderr, "latest")


# ---- trainer state with the right syntax and the wrong meaning ------------------------------------

BAD_STATES = {
    "global_step-string": {"global_step": "many"},
    "epoch-negative": {"epoch": -3},
    "batch_in_epoch-float": {"batch_in_epoch": 1.5},
    "train_time_s-list": {"train_time_s": [1]},
    "rng-garbage": {"rng": [{"python": [3, [1, 2], None]}]},
    "rng-numpy-garbage": {"rng": [{"numpy": ["MT19937", [1], 0, 0, 0.0]}]},
    "best_metric-string": {"best_metric": "best"},
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_trainer_state_with_wrong_types_is_refused(case, case_dir, workspace, tmp_path):
    folder = case_dir()
    path = folder / "trainer_state.json"
    state = json.loads(path.read_text())
    state.update(BAD_STATES[case])
    path.write_text(json.dumps(state))
    for reader in ("trainer_resume", "train_cli"):
        refused, message = read_with(reader, folder, workspace, tmp_path)
        assert_refused(refused, message, "trainer_state.json")


# ---- memory and real processes ----------------------------------------------------------------------

MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, shutil, sys, time
    from pathlib import Path
    from geometry_os.errors import CheckpointError
    from geometry_os.systems.pixel_llm import PixelLLM

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    PixelLLM.from_pretrained(sys.argv[1])  # warm: every import and one real load
    PixelLLM.from_pretrained(sys.argv[1])
    results = {"baseline_mb": peak_mb()}
    for folder in sys.argv[2:]:
        start = time.perf_counter()
        try:
            PixelLLM.from_pretrained(folder)
            outcome = "loaded"
        except CheckpointError as exc:
            outcome = str(exc)
        results[Path(folder).name] = {"outcome": outcome, "peak_mb": peak_mb(), "s": time.perf_counter() - start}
    print(json.dumps(results))
    """
)
MEMORY_CASES = {
    **{f"config-{k}": ("config", v) for k, v in ABSURD.items()},
    **{f"weights-{k}": ("weights", k) for k in FORGED if FORGED[k] is not None},
    "tokenizer-sparse-1GiB": ("sparse", "tokenizer.json"),
    "config-sparse-1GiB": ("sparse", "config.json"),
}
MEMORY_LIMIT_MB = 64  # over the warm baseline; a model of any of these sizes would need gigabytes

FIGURES: dict[str, object] = {}


@pytest.mark.slow
def test_hostile_checkpoints_allocate_nothing_in_a_fresh_process(tmp_path, workspace):
    """One subprocess loads every hostile folder in turn; its peak RSS may not grow past the warm baseline
    (ru_maxrss only rises, so a single unbounded allocation anywhere would show), and each refusal is quick.
    Next to it, a real ``geo-os pixel-llm caption`` on a pickled checkpoint exits 1 with one line."""
    folders = []
    for name, (kind, value) in MEMORY_CASES.items():
        folder = copy_checkpoint(workspace["step"], tmp_path / name)
        if kind == "config":
            spoil_config(folder, value)
        elif kind == "weights":
            (folder / "model.safetensors").write_bytes(FORGED[value])
        else:
            with open(folder / value, "r+b") as f:
                f.truncate(2**30)
        folders.append(str(folder))
    evil = copy_checkpoint(workspace["step"], tmp_path / "evil")
    marker = tmp_path / "PWNED"
    (evil / "model.safetensors").write_bytes(evil_pickle(marker, system=True))
    (evil / "tokenizer.json").write_bytes(evil_pickle(marker, system=True))

    probe = Measured([sys.executable, "-c", MEMORY_PROBE, str(workspace["step"]), *folders], env=child_env())
    cli_run = Measured([*geo_os_command(), "pixel-llm", "caption", str(workspace["image"]), "--checkpoint", str(evil)])
    result, caption = probe.wait(timeout=240), cli_run.wait(timeout=240)

    assert caption.returncode == 1, caption.stderr
    assert_one_line(caption.stderr, "model.safetensors")
    assert caption.stdout == "" and not marker.exists()

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    baseline = report.pop("baseline_mb")
    for name, row in report.items():
        assert row["outcome"] != "loaded", f"{name} loaded"
        assert "\n" not in row["outcome"], f"{name}: {row['outcome']!r}"
        assert row["peak_mb"] - baseline < MEMORY_LIMIT_MB, f"{name}: peak {row['peak_mb']:.0f} MB vs {baseline:.0f} MB"
        assert row["s"] < 20, f"{name} took {row['s']:.1f} s to refuse"
    FIGURES.update(
        cases=len(report),
        baseline_mb=round(baseline),
        worst_growth_mb=round(max(row["peak_mb"] for row in report.values()) - baseline, 1),
        slowest_s=round(max(r["s"] for r in report.values()), 2),
    )
    print(json.dumps(FIGURES))
