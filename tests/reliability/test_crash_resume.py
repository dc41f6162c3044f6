"""Crash-resume: ``geo-os pixel-llm train`` is SIGKILLed at random moments (one of them in the middle of a
checkpoint write) and resumed with ``--resume latest`` until it finishes; the final weights equal an
uninterrupted run's, and after every kill every checkpoint folder on disk loads.

The killed runs are children forked from a warm launcher (``fork_runner.py``, the real CLI entry point
in a separate process) so that a dozen restarts do not pay a dozen torch imports; the uninterrupted
reference run is a plain ``geo-os`` subprocess started alongside.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_support import HERE, child_env, geo_os_command

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

SEED = 20251128  # kill plan
MAX_STEPS = 80
INTERVAL = 2
KILLS = 12  # planned kills (at least 10 must land while the run is alive)
STEP_DIR = re.compile(r"^step-\d{8}$")
TMP_DIR = re.compile(r"^\.step-\d{8}\.tmp-[0-9a-f]{8}$")

# Filled by the test for docs/reliability.md (printed at the end of the test).
FIGURES: dict[str, object] = {}


def train_args(data: Path, out: Path) -> list[str]:
    return [
        "pixel-llm",
        "train",
        "--preset",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(out),
        "--quiet",
        "--set",
        f"trainer.max_steps={MAX_STEPS}",
        "--set",
        f"trainer.checkpoint_interval={INTERVAL}",
        "--set",
        "trainer.seed=3",
        "--set",
        "trainer.use_amp=false",
        "--set",
        "trainer.batch_size=8",
        "--set",
        "trainer.warmup_steps=4",
        "--set",
        "trainer.learning_rate=0.003",
        "--set",
        "trainer.log_interval=1",
    ]


class Launcher:
    """Talks to ``fork_runner.py``: one forked ``geo-os`` child at a time."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fork_runner.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
            bufsize=0,
        )
        self._buffer = b""
        self.runs = 0
        self.running: int | None = None  # pid of the child whose "exit" line has not been read yet
        assert self.read(120) == "ready"

    def read(self, timeout: float) -> str | None:
        """The next line from the launcher, or None if none arrives within ``timeout`` seconds."""
        deadline = time.perf_counter() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.perf_counter()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not ready:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            assert chunk, "the launcher died"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode().strip()

    def start(self, argv: list[str]) -> int:
        self.runs += 1
        request = {
            "argv": argv,
            "cwd": str(self.cwd),
            "stdout": str(self.cwd / f"run{self.runs}.out"),
            "stderr": str(self.cwd / f"run{self.runs}.err"),
        }
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        answer = self.read(60)
        assert answer and answer.startswith("pid "), answer
        self.running = int(answer.split()[1])
        return self.running

    def exited(self, timeout: float) -> int | None:
        """The running child's exit code (-9 when SIGKILLed), or None if it is still running after ``timeout``."""
        line = self.read(timeout)
        if line is None:
            return None
        assert line.startswith("exit "), line
        self.running = None
        return int(line.split()[1])

    def output(self) -> tuple[str, str]:
        return ((self.cwd / f"run{self.runs}.out").read_text(), (self.cwd / f"run{self.runs}.err").read_text())

    def close(self) -> None:
        """Stop a child still running (a failed test), then the launcher."""
        if self.running is not None:
            os.kill(self.running, signal.SIGKILL)
            self.exited(30)
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def steps_on_disk(checkpoint_dir: Path) -> list[int]:
    if not checkpoint_dir.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in checkpoint_dir.iterdir() if STEP_DIR.match(p.name))


def tmp_folders(checkpoint_dir: Path) -> list[str]:
    try:
        return [name for name in os.listdir(checkpoint_dir) if TMP_DIR.match(name)]
    except FileNotFoundError:
        return []


_LOADED: dict[tuple, bool] = {}


def check_every_folder_loads(checkpoint_dir: Path) -> int:
    """Every folder under a final name (step-*, best) loads; ``latest`` names one of them. Returns the count.

    A folder already checked is checked again only if any of its files changed (inode, size or mtime).
    """
    from geometry_os.plugins.amp_trainer import run_state as ckpt
    from geometry_os.systems.pixel_llm import PixelLLM

    folders = [p for p in checkpoint_dir.iterdir() if p.is_dir() and (STEP_DIR.match(p.name) or p.name == "best")]
    for folder in folders:
        key = (
            str(folder),
            tuple(sorted((f.name, f.stat().st_ino, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir())),
        )
        if key in _LOADED:
            continue
        model, tokenizer = PixelLLM.from_pretrained(folder)  # raises on any half-written file
        assert tokenizer is not None
        state = ckpt.read_state(folder)
        assert state is not None
        if folder.name != "best":
            assert state["global_step"] == int(folder.name[5:])
        ckpt.read_tensors(folder)
        _LOADED[key] = True
    if (checkpoint_dir / "latest").exists() or folders:
        latest = ckpt.read_latest(checkpoint_dir)
        assert latest in folders, latest
    return len(folders)


def final_weights(checkpoint_dir: Path) -> tuple[int, dict[str, torch.Tensor]]:
    from geometry_os.plugins.amp_trainer import run_state as ckpt
    from geometry_os.systems.pixel_llm import PixelLLM

    folder = ckpt.read_latest(checkpoint_dir)
    model, _ = PixelLLM.from_pretrained(folder)
    return int(folder.name[5:]), {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> Path:
    from click.testing import CliRunner

    from geometry_os.cli import cli

    root = tmp_path_factory.mktemp("crash-data")
    result = CliRunner().invoke(
        cli, ["pixel-llm", "make-shapes", "--out", str(root), "--n", "40", "--seed", "1", "--image-size", "32"]
    )
    assert result.exit_code == 0, result.output
    return root / "train.json"


def kill_plan(rng: random.Random) -> list[tuple[str, int, float]]:
    """(mode, steps, seconds), all drawn from the seeded ``rng``:

    * "after": once the run has written its first new checkpoint and logged ``steps`` (0-3) more
      optimizer steps, wait ``seconds`` (0-30 ms, a random point inside a step) and kill;
    * "startup": kill ``seconds`` (0.2-1 s) after the fork, while it loads data, model or checkpoint;
    * "write": kill the moment a temporary checkpoint folder appears (mid-write).

    Counting steps rather than seconds keeps every run's progress small on a fast machine too."""
    plan = [("after", rng.randint(0, 3), rng.uniform(0.0, 0.03)) for _ in range(KILLS)]
    plan[1] = ("startup", 0, rng.uniform(0.2, 1.0))
    for i in rng.sample(range(2, KILLS), 2):
        plan[i] = ("write", 0, 0.0)
    return plan


def logged_step(checkpoint_dir: Path) -> int:
    """The last optimizer step in metrics.jsonl (log_interval=1: one record per step)."""
    try:
        tail = (checkpoint_dir / "metrics.jsonl").read_bytes()[-400:]
    except FileNotFoundError:
        return 0
    for line in reversed(tail.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:  # a partial line
            continue
        if isinstance(record, dict) and "loss" in record:
            return int(record["step"])
    return 0


def test_sigkill_at_random_points_then_resume_matches_uninterrupted_run(tmp_path, shapes_data):
    work = tmp_path / "work"
    work.mkdir()
    interrupted, reference = work / "interrupted", work / "reference"
    # The uninterrupted run: a plain geo-os process, alongside the killed ones.
    reference_run = subprocess.Popen(
        [*geo_os_command(), *train_args(shapes_data, reference)],
        cwd=work,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    launcher = Launcher(work)
    rng = random.Random(SEED)
    plan = kill_plan(rng)
    kills, write_kills, folders_checked, log = 0, 0, 0, []
    started = time.perf_counter()
    try:
        while True:
            assert time.perf_counter() - started < 400, "crash-resume loop is not making progress"
            before, stale = steps_on_disk(interrupted), set(tmp_folders(interrupted))  # stale: left by a kill
            resume = ["--resume", "latest"] if before or (interrupted / "latest").exists() else []
            pid = launcher.start([*train_args(shapes_data, interrupted), *resume])
            spawned = time.perf_counter()
            mode, steps, delay = plan[kills] if kills < len(plan) else ("finish", 0, 0.0)
            if kills >= len(plan) and write_kills == 0:
                mode = "write"  # no planned write-kill landed yet: keep trying until one does
            code, target, deadline = None, None, None
            while code is None:
                now = time.perf_counter()
                if mode == "startup" and now - spawned >= delay:
                    break
                if mode == "write" and set(tmp_folders(interrupted)) - stale:
                    break
                if mode == "after":
                    if target is None and (steps_on_disk(interrupted) or [0])[-1] > (before or [0])[-1]:
                        target = steps_on_disk(interrupted)[-1] + steps
                    if deadline is None and target is not None and logged_step(interrupted) >= target:
                        deadline = now + delay
                    if deadline is not None and now >= deadline:
                        break
                code = launcher.exited(0.0005 if mode == "write" else 0.002)
            if code is None:  # still running: crash it
                os.kill(pid, signal.SIGKILL)
                code = launcher.exited(60)
            out, err = launcher.output()
            if code == -signal.SIGKILL:
                kills += 1
                caught_write = bool(set(tmp_folders(interrupted)) - stale)  # this run died mid-write
                write_kills += caught_write
                log.append(
                    f"kill {kills}: {mode} (+{steps} steps, +{delay:.3f} s): logged step {logged_step(interrupted)},"
                    f" checkpoints up to {steps_on_disk(interrupted)[-1:]}, temporary folder left: {caught_write}"
                )
                folders_checked += check_every_folder_loads(interrupted)
                continue
            assert code == 0, f"run {launcher.runs} failed ({code}):\n{out}\n{err}"
            if kills >= 10 and write_kills >= 1:
                break
            pytest.fail(f"training finished after only {kills} kills; raise MAX_STEPS\n" + "\n".join(log))
    finally:
        launcher.close()
        if reference_run.poll() is None:
            reference_out, reference_err = reference_run.communicate(timeout=300)
        else:
            reference_out, reference_err = reference_run.communicate()
    assert reference_run.returncode == 0, reference_err
    assert kills >= 10 and write_kills >= 1, log
    check_every_folder_loads(interrupted)

    step_a, resumed = final_weights(interrupted)
    step_b, uninterrupted = final_weights(reference)
    assert step_a == step_b == MAX_STEPS
    assert resumed.keys() == uninterrupted.keys()
    diff = max((resumed[k] - uninterrupted[k]).abs().max().item() for k in resumed)
    assert diff <= 1e-6, f"max |difference| {diff}"
    FIGURES.update(
        kills=kills,
        write_kills=write_kills,
        runs=launcher.runs,
        folders_checked=folders_checked,
        max_abs_diff=diff,
        seconds=round(time.perf_counter() - started, 1),
    )
    print(json.dumps(FIGURES))
    print("\n".join(log))
