"""Smoke tests for the benchmark scripts: they run end to end on tiny sizes and write their JSON.
No timing is asserted (the machine may be busy); the numbers live in docs/performance.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

pytest.importorskip("transformers")  # the HF reference model


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture
def run_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import run as run_module

    return run_module


def test_run_quick_writes_json_and_doc_table(tmp_path, run_module):
    out, doc = tmp_path / "latest.json", tmp_path / "performance.md"
    kind = run_module.machine_kind()  # this machine's table: replaced; another kind's: kept
    doc.write_text(
        f"# Performance\n\nprose before\n\n<!-- benchmarks/run.py {kind}: begin -->\nold\n"
        f"<!-- benchmarks/run.py {kind}: end -->\n\n<!-- benchmarks/run.py OTHER, bf16 native: begin -->\n"
        "other machine\n<!-- benchmarks/run.py OTHER, bf16 native: end -->\n\nprose after\n"
    )
    run("run.py", "--quick", "--threads", "1", "--out", str(out), "--doc", str(doc))
    results = json.loads(out.read_text())
    from geometry_os.systems.pixel_llm.cpu_bf16 import EMULATED_BF16

    assert results["meta"]["bf16"] == ("emulated" if EMULATED_BF16 else "native")  # never a wrong label
    assert results["meta"]["kind"] == kind and "other machine" in doc.read_text()
    assert {r["dtype"] for r in results["train"]} == {"fp32", "bf16"}
    assert all(r["ours"]["images_per_s"] > 0 and r["hf"]["images_per_s"] > 0 for r in results["train"])
    assert {(r["decoding"], r["batch"]) for r in results["generate"]} >= {("greedy", 1), ("beam5", 1)}
    # bf16 generation where it is native (both models' weights in bf16), never where it is emulated
    assert {r["dtype"] for r in results["generate"]} == ({"fp32"} if EMULATED_BF16 else {"fp32", "bf16"})
    assert all(r["ours"]["peak_rss_mib"] > 0 for r in results["memory"])
    text = doc.read_text()
    assert "prose before" in text and "prose after" in text and "old" not in text
    assert "| tiny fp32 |" in text


def test_write_doc_keeps_one_table_per_machine_kind(tmp_path, run_module):
    doc = tmp_path / "performance.md"
    doc.write_text("# P\n\n<!-- benchmarks/run.py A: begin -->\na1\n<!-- benchmarks/run.py A: end -->\n\nafter\n")
    run_module.write_doc("b1", doc, "benchmarks/run.py B", heading="### CPU: B")
    run_module.write_doc("a2", doc, "benchmarks/run.py A", heading="### CPU: A")
    text = doc.read_text()
    assert "a1" not in text and text.index("a2") < text.index("### CPU: B") < text.index("b1") < text.index("after")
    assert text.count("### CPU: A") == 0  # an existing section keeps its own heading


def test_bench_generate_quick(tmp_path):
    out = tmp_path / "gen.json"
    run("bench_generate.py", "--quick", "--threads", "1", "--repeats", "1", "--out", str(out))
    results = json.loads(out.read_text())["results"]
    assert results and all(r["repeats"] == 1 for r in results)  # --quick: no extra runs


@pytest.mark.slow
def test_bench_onnx_quick(tmp_path):
    out = tmp_path / "onnx.json"
    run("bench_onnx.py", "--quick", "--repeats", "1", "--out", str(out))
    results = json.loads(out.read_text())["results"]
    assert results and all(r["onnx"]["captions_per_s"] > 0 and r["torch"]["captions_per_s"] > 0 for r in results)


@pytest.fixture
def bench_generate_module(monkeypatch):
    """bench_generate imported in-process, with ``timed`` replaced by a fake clock (0.1 s a call) that
    records which model ran: ``run_case``'s repeat rule, without models or real timing."""
    import torch

    monkeypatch.syspath_prepend(str(BENCH))
    import bench_generate

    calls: list[str] = []

    def fake_timed(fn, device):
        calls.append(fn.__name__)
        return 0.1, torch.zeros(1, bench_generate.NEW_TOKENS + 1)

    monkeypatch.setattr(bench_generate, "timed", fake_timed)
    return bench_generate, calls


@pytest.mark.parametrize("repeats, min_seconds, runs", [(2, 0.0, 2), (2, 0.35, 4), (5, 0.2, 5), (2, 1e9, None)])
def test_run_case_repeats_until_each_model_ran_min_seconds(bench_generate_module, repeats, min_seconds, runs):
    bench_generate, calls = bench_generate_module
    runs = bench_generate.MAX_REPEATS if runs is None else runs
    r = bench_generate.run_case(None, None, "tiny", "greedy", 1, repeats, "cpu", None, min_seconds=min_seconds)
    assert r["repeats"] == runs and len(r["ours"]["seconds"]) == len(r["hf"]["seconds"]) == runs
    assert calls == ["run_ours", "run_hf"] * (2 + runs)  # two warm-up pairs, then alternating
    assert r["ours"]["captions_per_s"] == pytest.approx(10.0) and r["ratio"] == pytest.approx(1.0)


def test_bench_data_tiny(tmp_path):
    out = tmp_path / "data.json"
    run("bench_data.py", "--n", "64", "--workers", "0", "--out", str(out))
    names = [r["name"] for r in json.loads(out.read_text())["results"]]
    assert any("PNG files" in n for n in names)


@pytest.mark.slow
def test_learn_shapes_records_the_run_and_the_machine(tmp_path):
    out = tmp_path / "learn.json"
    run(
        "learn_shapes.py",
        "--budget-s",
        "3",
        "--num-scenes",
        "64",
        "--eval-n",
        "8",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(out),
    )
    result = json.loads(out.read_text())
    assert result["steps"] > 0 and result["test_best"]["n"] == 8 and 0 <= result["test_best"]["exact_match"] <= 1
    assert result["meta"]["kind"].endswith(("bf16 native", "bf16 emulated"))  # the machine it ran on


@pytest.mark.slow
def test_compositional_benchmark_reports_each_held_out_pair(tmp_path):
    out = tmp_path / "comp.json"
    run(
        "compositional.py",
        "--budget-s",
        "3",
        "--num-scenes",
        "64",
        "--eval-n",
        "24",
        "--hold-out",
        "red circle,blue square",
        "--run-dir",
        str(tmp_path / "run"),
        "--curve",
        "2",
        "--curve-n",
        "8",
        "--out",
        str(out),
    )
    result = json.loads(out.read_text())
    assert result["hold_out"] == ["blue square", "red circle"]
    assert result["meta"]["kind"].endswith(("bf16 native", "bf16 emulated"))  # the machine it ran on
    for name in ("best", "latest"):
        comp = result[f"compositional_{name}"]
        assert comp["n"] == 24 and set(comp["per_pair"]) == {"blue square", "red circle"}
        assert sum(v["n"] for v in comp["per_pair"].values()) >= 24  # every scene holds a pair
        assert result[f"test_{name}"]["n"] == 24 and 0 <= comp["exact_match"] <= 1
    steps = [p["step"] for p in result["curve"]]
    assert steps == sorted(steps) and steps[-1] == result["steps"]  # every 2 steps, and the last
    assert all(0 <= p["compositional"] <= 1 and 0 <= p["test"] <= 1 for p in result["curve"])

    # the same run decoded again with guidance, no training; then the curves drawn
    again = tmp_path / "again.json"
    run(
        "compositional.py",
        "--eval-only",
        str(tmp_path / "run"),
        "--hold-out",
        "red circle,blue square",
        "--eval-n",
        "8",
        "--generation",
        "guidance_scale=2",
        "--out",
        str(again),
    )
    decoded = json.loads(again.read_text())
    assert decoded["generation"] == {"guidance_scale": 2} and decoded["steps"] == result["steps"]
    assert decoded["compositional_best"]["n"] == 8 and decoded["test_best"]["n"] == 8
    from geometry_os.systems.pixel_llm.checkpoint import read_latest

    weights = [
        (f / "model.safetensors").read_bytes() for f in (tmp_path / "run" / "best", read_latest(tmp_path / "run"))
    ]
    assert decoded["latest_is_best"] == (weights[0] == weights[1])
    if decoded["latest_is_best"]:  # the same weights are decoded once, their scores kept for both
        assert decoded["compositional_latest"] == decoded["compositional_best"]
        assert decoded["test_latest"] == decoded["test_best"]
    rows = run("compositional.py", "--table", str(out), str(again)).stdout.splitlines()
    assert rows[0].startswith("| setting | seed |") and "blue square | red circle |" in rows[0] and len(rows) == 4
    # a budget other than the default 600 s is part of the setting
    assert rows[2].startswith("| `--budget-s 3` | 42 |")
    assert rows[3].startswith("| `--budget-s 3`, `guidance_scale=2` |")
    pytest.importorskip("matplotlib")
    run("compositional.py", "--plot", str(out), "--plot-out", str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").stat().st_size > 1000


@pytest.mark.slow
def test_bench_serve_quick(tmp_path):
    pytest.importorskip("starlette", reason="the serve extra is not installed")
    out = tmp_path / "serve.json"
    proc = run(
        "bench_serve.py",
        "--quick",
        "--threads",
        "1",
        "--requests",
        "60",
        "--sequential",
        "10",
        "--concurrency",
        "8",
        "--out",
        str(out),
    )
    result = json.loads(out.read_text())
    assert result["sequential"]["requests"] == 10 and result["concurrent"]["requests"] == 60
    assert result["sequential"]["errors"] == 0 and result["concurrent"]["errors"] == 0
    assert result["memory"]["rss_peak_mib"] > 0 and "| 8 concurrent clients |" in proc.stdout


@pytest.mark.slow
def test_bench_caption_folder_quick(tmp_path):
    out = tmp_path / "folder.json"
    run("bench_caption_folder.py", "--quick", "--threads", "1", "--out", str(out))
    r = json.loads(out.read_text())
    assert r["images"] == 64 and all(r[k]["images_per_s"] > 0 for k in ("ours", "hf", "ours_no_read_ahead"))
    # imported weights, tokenizer and preprocessing: ours captions as HF does (JPEG draft decoding aside)
    assert r["same_captions"] >= 0.9, r["examples"]
    assert r["meta"]["kind"] and "torch threads 1" in r["meta"]["machine"]


def test_bench_caption_folder_quick_in_bf16(tmp_path):
    out = tmp_path / "folder.json"
    run("bench_caption_folder.py", "--quick", "--threads", "1", "--dtype", "bfloat16", "--out", str(out))
    r = json.loads(out.read_text())
    assert r["dtype"] == "bfloat16" and all(r[k]["images_per_s"] > 0 for k in ("ours", "hf"))
    # the same weights rounded to bf16 on both sides: greedy ties may break differently, most agree
    assert r["same_captions"] >= 0.5, r["examples"]


def test_bench_rerank_quick(tmp_path):
    out = tmp_path / "rerank.json"
    proc = run("bench_rerank.py", "--quick", "--threads", "1", "--out", str(out))
    r = json.loads(out.read_text())
    (case,) = r["results"]
    assert (case["preset"], case["images"], case["beams"]) == ("tiny", 2, 4)
    assert all(case["ms"][k]["median"] > 0 for k in ("cached", "per_position", "beam_search"))
    assert case["max_score_difference_nats"] < 1e-3  # both algorithms score the same candidates alike
    assert "| tiny | 2 x 4 | 8 |" in proc.stdout and "torch threads 1" in r["meta"]["machine"]


def test_compositional_table_names_the_budget(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import compositional

    base = {"set": ["trainer.synthetic_hold_out=[]", "trainer.batch_size=16"]}
    assert compositional._setting({**base, "budget_s": 600.0}) == "`batch_size=16`"
    assert compositional._setting({**base, "budget_s": 1200.0}) == "`--budget-s 1200`, `batch_size=16`"
    assert compositional._setting({**base, "budget_s": None}) == "`no time budget`, `batch_size=16`"  # trained by steps
