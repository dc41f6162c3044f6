"""ONNX export and the onnxruntime runner: captions and logits equal to PyTorch's, and the refusals.

The model is the tiny preset with random weights scaled up (cross-attention most), so that greedy
paths differ from image to image and end at different lengths (checked below, or equality would
prove little). It is exported once, through the CLI, for the whole module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TOY_MODEL, assert_one_line_error
from PIL import Image

from geometry_os.cli import cli
from geometry_os.errors import CheckpointError, ComponentError, ConfigError, GeometryOSError
from geometry_os.systems.pixel_llm import create_pixel_llm
from geometry_os.systems.pixel_llm.resolution import get_component

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

WORDS = "a red blue green circle square triangle left of right above below big small the and on in".split()


def run(*args: str):
    return CliRunner().invoke(cli, ["pixel-llm", *args])


def image_sensitive_model(vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_pixel_llm(preset="tiny", vocab_size=vocab_size).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "norm" not in name:
                p.mul_(12.0 if "_x" in name else 2.0)  # sharp logits that depend on the image
        model.decoder.wte.weight[2] *= 3.0  # <eos> likely enough that captions end at different steps
        model.decoder.wte.weight[vocab_size - 3 :] *= 4.0  # ids the tokenizer cannot decode: often the argmax
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    tokenizer = get_component("tokenizer", "simple").load()([" ".join(rng.choice(WORDS, 6)) for _ in range(50)])
    # 3 ids beyond the tokenizer: the runner must suppress them as generate_caption does
    model = image_sensitive_model(len(tokenizer) + 3)
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(20):  # a coloured block on a coloured background, sizes that need resizing
        a = np.zeros((40 + i, 48, 3), np.uint8)
        a[:] = rng.integers(0, 256, 3)
        y, x = rng.integers(0, 30, 2)
        a[y : y + 12, x : x + 14] = rng.integers(0, 256, 3)
        paths.append(folder / f"img{i:02d}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "onnx"
    result = run("export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "max abs diff" in result.output
    return out


@pytest.fixture(scope="module")
def loaded(checkpoint, exported):
    from geometry_os.plugins.onnx_export.runtime import OnnxCaptioner
    from geometry_os.systems.pixel_llm.modeling import PixelLLM

    model, tokenizer = PixelLLM.from_pretrained(checkpoint)
    return model, tokenizer, OnnxCaptioner(exported)


def pixels(runner, paths) -> np.ndarray:
    from geometry_os.systems.pixel_llm.images import load_image

    return np.stack([runner.preprocess(load_image(str(p), runner.max_image_pixels)) for p in paths])


def test_export_folder_holds_graphs_tokenizer_preprocessing_and_manifest(checkpoint, exported, loaded):
    model = loaded[0]
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["format"] == "pixel-llm-onnx"
    assert manifest["special_ids"] == {"pad": 0, "bos": 1, "eos": 2}
    step = manifest["graphs"]["decoder_step"]
    assert list(step["inputs"]) == ["input_ids", "past_self_kv", "cross_kv"]
    assert list(step["outputs"]) == ["logits", "present_self_kv"]
    assert step["inputs"]["past_self_kv"]["shape"] == [2, 2, "batch", 2, "past_length", 16]
    assert all(diff <= 1e-4 for diff in manifest["verified_max_abs_diff"].values())
    for graph in manifest["graphs"].values():
        assert (exported / graph["file"]).stat().st_size > 0
    assert (exported / "tokenizer.json").read_bytes() == (checkpoint / "tokenizer.json").read_bytes()
    pre = json.loads((exported / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 32, "width": 32}
    assert pre["image_mean"] == list(model.config.image_mean) and pre["image_std"] == list(model.config.image_std)


def test_preprocessing_equals_the_training_transform(loaded, images):
    from geometry_os.systems.pixel_llm.captioning import preprocessing_config
    from geometry_os.systems.pixel_llm.data import build_transform
    from geometry_os.systems.pixel_llm.images import load_image

    model, _, runner = loaded
    transform = build_transform(preprocessing_config(model))
    for path in images[:5]:
        image = load_image(str(path), runner.max_image_pixels)
        np.testing.assert_allclose(runner.preprocess(image), transform(image).numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_greedy_captions_equal_pytorch_on_20_images(loaded, images, batch_size):
    from geometry_os.systems.pixel_llm.captioning import caption_images
    from geometry_os.systems.pixel_llm.inference import generate_caption

    model, tokenizer, runner = loaded
    x = pixels(runner, images)
    lengths = set()
    for start in range(0, len(images), batch_size):
        chunk = x[start : start + batch_size]
        ours = runner.generate(chunk)
        theirs = generate_caption(model, torch.from_numpy(chunk), tokenizer=tokenizer, return_dict_in_generate=True)
        np.testing.assert_array_equal(ours.sequences, theirs.sequences.numpy())
        np.testing.assert_allclose(ours.sequence_scores, theirs.sequence_scores.numpy(), rtol=0, atol=1e-4)
        assert ours.texts == theirs.texts
        lengths |= {int((row != 0).sum()) for row in ours.sequences}
    # the equality means something: paths differ per image and rows finish at different steps
    distinct = {tuple(runner.generate(x[i : i + 1]).sequences[0]) for i in range(len(images))}
    assert len(distinct) >= 8 and len(lengths) >= 3, (len(distinct), lengths)
    # and suppressing the ids the tokenizer cannot decode matters: unsuppressed, some would be chosen
    raw, _ = runner.step(
        np.full((len(images), 1), 1), runner.empty_cache(len(images)), runner.cross_kv(runner.encode(x))
    )
    assert (raw.argmax(axis=-1) >= len(tokenizer)).any()

    # from the files: the same captions and scores as the caption command's path
    torch_results = list(caption_images(model, tokenizer, images, batch_size=batch_size))
    onnx_results = list(runner.caption_files(images, batch_size=batch_size))
    assert [r.caption for r in onnx_results] == [r.caption for r in torch_results]
    assert max(abs(a.score - b.score) for a, b in zip(onnx_results, torch_results)) <= 1e-4


@pytest.mark.parametrize("batch", [1, 4])
def test_encoder_outputs_and_every_step_logits_within_1e_4(loaded, images, batch):
    from geometry_os.systems.pixel_llm.inference import generate_caption

    model, _, runner = loaded
    x = pixels(runner, images[:batch])
    images_t = torch.from_numpy(x)
    with torch.no_grad():
        features = model.encode(images_t)
        path = generate_caption(model, images_t, max_length=model.config.max_seq_len)  # PyTorch's greedy tokens
        ours = runner.encode(x)
        assert np.abs(ours - features.numpy()).max() <= 1e-4
        cross = runner.cross_kv(ours)
        cache = model.decoder.init_cache(features, path.shape[1])
        assert np.abs(cross - cache.cross_kv.numpy()).max() <= 1e-4
        past = runner.empty_cache(batch)
        worst = 0.0
        for t in range(path.shape[1]):  # teacher-forced along the greedy path, every position
            tokens = path[:, t : t + 1]
            logits, past = runner.step(tokens.numpy(), past, cross)
            worst = max(worst, float(np.abs(logits - model.decoder.step(tokens, cache).numpy()).max()))
        assert past.shape[4] == path.shape[1]
    assert worst <= 1e-4


def test_caption_onnx_command_prints_what_caption_prints(checkpoint, exported, images):
    onnx_run = run("caption-onnx", str(exported), *map(str, images[:6]), "--batch-size", "4", "--json")
    torch_run = run(  # the exported graphs are fp32; --dtype auto would pick bf16 where it is native
        "caption",
        *map(str, images[:6]),
        "--checkpoint",
        str(checkpoint),
        "--batch-size",
        "4",
        "--json",
        "--dtype",
        "float32",
    )
    assert onnx_run.exit_code == 0 and torch_run.exit_code == 0, onnx_run.output + torch_run.output
    ours, theirs = json.loads(onnx_run.stdout), json.loads(torch_run.stdout)
    assert [(r["image"], r["caption"]) for r in ours] == [(r["image"], r["caption"]) for r in theirs]
    assert all(abs(a["score"] - b["score"]) <= 1e-4 for a, b in zip(ours, theirs))


def test_caption_onnx_reports_an_unreadable_image_and_captions_the_rest(exported, images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    result = CliRunner().invoke(
        cli, ["pixel-llm", "caption-onnx", str(exported), str(images[0]), str(bad), str(images[1])]
    )
    assert result.exit_code == 1
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [str(images[0]), str(images[1])]
    assert (
        result.stderr.strip()
        == f"Error: {bad}: cannot identify image file (not an image, or a format Pillow cannot read)"
    )


def test_max_new_tokens_min_length_and_suppress_tokens(loaded, images):
    _, _, runner = loaded
    x = pixels(runner, images[:6])
    assert runner.generate(x, max_new_tokens=3).sequences.shape[1] <= 4
    assert (runner.generate(x, min_length=5).sequences[:, :5] != 2).all()
    first = runner.generate(x, max_new_tokens=1).sequences[:, 1]
    again = runner.generate(x, max_new_tokens=1, suppress_tokens=[int(t) for t in first]).sequences[:, 1]
    assert not set(again.tolist()) & set(first.tolist())


def test_runner_imports_no_torch(exported, images):
    code = (
        "import sys\n"
        "from geometry_os.plugins.onnx_export.runtime import OnnxCaptioner\n"
        f"r = OnnxCaptioner({str(exported)!r}, threads=1)\n"
        f"print(next(r.caption_files([{str(images[0])!r}])).caption is not None, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["True", "False"], out.stderr


# ---- refusals: one line each --------------------------------------------------------------------


def test_unsupported_decoding_options_are_refused(loaded, images):
    _, _, runner = loaded
    x = pixels(runner, images[:1])
    with pytest.raises(ConfigError, match="greedily only; got strategy 'beam'"):
        runner.generate(x, num_beams=3)
    with pytest.raises(ConfigError, match="does not support no_repeat_ngram_size, repetition_penalty"):
        runner.generate(x, repetition_penalty=1.2, no_repeat_ngram_size=2)


def test_missing_extra_is_one_line_naming_the_extra(checkpoint, exported, tmp_path, monkeypatch):
    from geometry_os.plugins.onnx_export.export import export_onnx
    from geometry_os.plugins.onnx_export.runtime import OnnxCaptioner

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(GeometryOSError, match=r"needs the 'onnxruntime' package: pip install 'geometry-os\[onnx\]'"):
        OnnxCaptioner(exported)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(GeometryOSError, match=r"ONNX export needs the 'onnxscript' package"):
        export_onnx(checkpoint, tmp_path / "out")
    assert_one_line_error(
        run("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")),
        "pip install 'geometry-os[onnx]'",
    )
    assert not (tmp_path / "out").exists()


def test_third_party_encoder_is_refused_in_one_line(toy_plugin, tmp_path):
    from geometry_os.plugins.onnx_export.export import export_onnx
    from geometry_os.systems.pixel_llm import PixelLLM
    from geometry_os.systems.pixel_llm.config import PixelLLMConfig

    config = PixelLLMConfig(**TOY_MODEL)
    tokenizer = get_component("tokenizer", "simple").load()(["a red circle"])
    folder = PixelLLM(config).save_pretrained(tmp_path / "toy", tokenizer=tokenizer)
    with pytest.raises(ComponentError, match="encoder 'toy' cannot be exported to ONNX .*supports encoder 'vit'"):
        export_onnx(folder, tmp_path / "out")
    assert_one_line_error(
        run("export", "--checkpoint", str(folder), "--out", str(tmp_path / "out")),
        "config.json",
        "encoder 'toy' cannot be exported",
    )
    assert not (tmp_path / "out").exists()


def test_bad_folders_are_one_line_errors(checkpoint, exported, tmp_path):
    from geometry_os.plugins.onnx_export.export import export_onnx
    from geometry_os.plugins.onnx_export.runtime import OnnxCaptioner

    with pytest.raises(CheckpointError, match="manifest.json: missing"):
        OnnxCaptioner(checkpoint)  # a checkpoint is not an export
    assert_one_line_error(
        run("caption-onnx", str(tmp_path / "nope"), str(exported / "manifest.json")), "export folder not found"
    )
    no_tokenizer = create_pixel_llm(preset="tiny").save_pretrained(tmp_path / "bare")
    with pytest.raises(CheckpointError, match="has no tokenizer"):
        export_onnx(no_tokenizer, tmp_path / "out")
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["encoder"]["file"] = "../encoder.onnx"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"manifest.json: file names must be plain names .*'../encoder.onnx'"):
        OnnxCaptioner(copy)
    manifest["graphs"]["encoder"]["file"] = "encoder.onnx"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "encoder.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match=r"encoder.onnx: onnxruntime cannot load it"):
        OnnxCaptioner(copy)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert_one_line_error(
        run("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "mine")),
        "refusing to replace a folder that holds other files",
    )
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_other_layouts_export_too(tmp_path, images):
    """Cross-attention on one layer of three, an untied LM head, a conv stem with a learned position
    table, a class token, a pre-norm and quick-GELU (the imported encoders' options), encoder wider than the decoder, timm-style preprocessing (bicubic, shorter side + centre
    crop, another rescale factor): the same pixels and greedy ids as PyTorch."""
    from geometry_os.plugins.onnx_export.export import export_onnx
    from geometry_os.plugins.onnx_export.runtime import OnnxCaptioner
    from geometry_os.systems.pixel_llm.inference import generate_caption

    torch.manual_seed(0)
    vocab = get_component("tokenizer", "simple").load()(["a red circle left of a blue square"])
    model = create_pixel_llm(
        preset="tiny",
        vocab_size=len(vocab),
        text_num_layers=3,
        num_cross_attention_layers=1,
        tie_word_embeddings=False,
        vision_pos_embed="learned",
        encoder_options={"stem": "conv", "class_token": True, "pre_norm": True, "act": "quick_gelu"},
        vision_embed_dim=48,
        image_interpolation="bicubic",
        image_resize="shorter_crop",
        image_crop_pct=0.875,
        image_rescale_factor=1 / 127.5,
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "norm" not in name:
                p.mul_(3.0)
    assert model.decoder.cross_attention_layers == (2,) and model.decoder.lm_head is not None
    export_onnx(model.save_pretrained(tmp_path / "ckpt", tokenizer=vocab), tmp_path / "onnx")
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    ours = OnnxCaptioner(tmp_path / "onnx").generate(x).sequences
    np.testing.assert_array_equal(ours, generate_caption(model, torch.from_numpy(x), tokenizer=vocab).numpy())
    assert ours.shape[1] > 2

    from geometry_os.systems.pixel_llm.captioning import caption_images, preprocessing_config
    from geometry_os.systems.pixel_llm.data import build_transform
    from geometry_os.systems.pixel_llm.images import load_image

    runner = OnnxCaptioner(tmp_path / "onnx")
    transform = build_transform(preprocessing_config(model))
    for path in images[:3]:  # 48 wide, 40.. high: the crop keeps the middle of the resized image
        image = load_image(str(path), runner.max_image_pixels)
        np.testing.assert_allclose(runner.preprocess(image), transform(image).numpy(), rtol=0, atol=1e-5)
    assert [r.caption for r in runner.caption_files(images[:8], batch_size=4)] == [
        r.caption for r in caption_images(model, vocab, images[:8], batch_size=4)
    ]
