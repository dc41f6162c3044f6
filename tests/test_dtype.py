"""Captioning in bfloat16: ``--dtype`` / ``dtype=`` (``auto`` picks bf16 only where the hardware computes it
natively), and bf16 captions that agree with float32's within bf16's precision."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import caption_workspace

from geometry_os.cli import cli
from geometry_os.errors import ConfigError
from geometry_os.systems.pixel_llm import cpu_bf16
from geometry_os.systems.pixel_llm.cpu_bf16 import inference_dtype

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return caption_workspace(tmp_path_factory.mktemp("dtype"))


def test_auto_is_bf16_only_where_it_is_native(monkeypatch):
    assert [inference_dtype(n) for n in ("float32", "bfloat16", "float16")] == [
        torch.float32,
        torch.bfloat16,
        torch.float16,
    ]
    monkeypatch.setattr(cpu_bf16, "EMULATED_BF16", True)
    assert inference_dtype("auto", "cpu") == torch.float32  # emulated bf16 is slower than fp32
    monkeypatch.setattr(cpu_bf16, "EMULATED_BF16", False)
    assert inference_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert inference_dtype("auto", "cuda:0") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert inference_dtype("auto", "cuda") == torch.float32
    with pytest.raises(ValueError, match="dtype 'half'"):
        inference_dtype("half")


def test_a_bf16_model_scores_the_fp32_captions_within_bf16_precision(ws):
    from geometry_os.systems.pixel_llm.inference import generate_output
    from geometry_os.systems.pixel_llm.plugin_api import load_checkpoint

    fp32, tok = load_checkpoint(ws / "ckpt", "cpu", "float32")
    bf16, _ = load_checkpoint(ws / "ckpt", "cpu", "bfloat16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    images = torch.rand(3, 3, 32, 32)
    out = generate_output(fp32, images, tokenizer=tok, max_new_tokens=8)
    ids = out.sequences
    with torch.no_grad():
        ref = torch.log_softmax(fp32(images, ids).logits.float(), -1)
        low = torch.log_softmax(bf16(images.bfloat16(), ids).logits.float(), -1)
    # bf16 keeps 8 bits of mantissa: per-token log-probs of a tiny random model agree to a few hundredths
    assert (ref - low).abs().max() < 0.1
    greedy_bf16 = generate_output(bf16, images, tokenizer=tok, max_new_tokens=8)
    assert greedy_bf16.sequences.shape[0] == 3 and all(isinstance(t, str) for t in greedy_bf16.texts)


def test_caption_dtype_flag(ws, monkeypatch):
    def run(*extra: str):
        args = ["pixel-llm", "caption", str(ws / "0.png"), str(ws / "1.png"), "--checkpoint", str(ws / "ckpt")]
        return CliRunner().invoke(cli, [*args, *extra], prog_name="geo-os")

    plain = run("--dtype", "float32")
    assert plain.exit_code == 0 and len(plain.stdout.splitlines()) == 2 and not plain.stderr
    low = run("--dtype", "bfloat16")
    assert low.exit_code == 0, low.output
    assert [line.split("\t")[0] for line in low.stdout.splitlines()] == [
        line.split("\t")[0] for line in plain.stdout.splitlines()
    ]
    monkeypatch.setattr(cpu_bf16, "EMULATED_BF16", True)  # auto on a CPU that emulates bf16: fp32, no note
    auto = run()
    assert auto.exit_code == 0 and auto.stdout == plain.stdout and not auto.stderr
    monkeypatch.setattr(cpu_bf16, "EMULATED_BF16", False)  # a CPU with native bf16: auto says what it chose
    native = run()
    assert native.exit_code == 0 and native.stderr.strip() == "dtype: bfloat16 (--dtype auto on cpu)"
    bad = run("--dtype", "half")
    assert bad.exit_code == 2 and "'half' is not one of" in bad.stderr


def test_load_checkpoint_names_a_bad_dtype(ws):
    from geometry_os.systems.pixel_llm.plugin_api import load_checkpoint

    with pytest.raises(ConfigError, match="--dtype: dtype 'int8'"):
        load_checkpoint(ws / "ckpt", "cpu", "int8")


def test_the_trainer_says_what_it_computes_in():
    from geometry_os.plugins.amp_trainer.trainer import precision_line
    from geometry_os.systems.pixel_llm.plugin_api import TrainerConfig

    cpu = torch.device("cpu")
    assert precision_line(TrainerConfig(use_amp=False), None, cpu) == "precision: float32 (use_amp off)"
    assert "this CPU has no native bf16" in precision_line(TrainerConfig(), None, cpu)
    auto = precision_line(TrainerConfig(), torch.bfloat16, cpu)
    assert auto == "precision: bfloat16 autocast (amp_dtype auto: this CPU computes bf16 natively)"
    assert precision_line(TrainerConfig(amp_dtype="bfloat16"), torch.bfloat16, cpu) == "precision: bfloat16 autocast"


def test_native_bf16_reads_the_cpu_flags_on_x86(monkeypatch):
    caps = {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    # AVX-512 without BF16 (Skylake .. Ice Lake): oneDNN converts, so it is not native
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert not cpu_bf16.native_bf16()
    caps["avx512_bf16"] = True
    assert cpu_bf16.native_bf16()
    caps.update(avx512_bf16=False, amx_bf16=True)
    assert cpu_bf16.native_bf16()


def test_caption_images_dtype_applies_to_a_checkpoint_only(ws):
    from geometry_os.systems.pixel_llm import caption_images
    from geometry_os.systems.pixel_llm.plugin_api import load_checkpoint

    image = str(ws / "0.png")
    low = caption_images([image], checkpoint=ws / "ckpt", dtype="bfloat16")
    assert isinstance(low[0]["caption"], str)
    with pytest.raises(ConfigError, match="dtype 'int8'"):
        caption_images([image], checkpoint=ws / "ckpt", dtype="int8")
    model, tok = load_checkpoint(ws / "ckpt")
    with pytest.raises(ConfigError, match="keeps its own dtype"):
        caption_images([image], model=model, tokenizer=tok, dtype="bfloat16")
