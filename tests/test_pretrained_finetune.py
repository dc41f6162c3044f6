"""Fine-tuning from an imported checkpoint on real photographs (``tests/data/photos``): the loss falls,
``--init-from`` lists the fresh tensors, and ``caption`` uses the imported tokenizer and preprocessing."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from pretrained_refs import make_ved, perturb, save_gpt2_tokenizer

from geometry_os.cli import cli
from geometry_os.plugins.pretrained.convert import import_pretrained
from geometry_os.systems.pixel_llm.modeling import PixelLLM

transformers = pytest.importorskip("transformers")
PHOTOS = Path(__file__).parent / "data" / "photos"
CAPTIONS = {
    "face.jpg": "a woman in a navy uniform",
    "medals.jpg": "medals on a navy uniform",
    "hat.jpg": "a white navy hat",
    "flag.jpg": "a flag behind a woman",
}


def write_data(tmp_path: Path) -> Path:
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"image": str(PHOTOS / name), "caption": text} for name, text in CAPTIONS.items()]))
    return data


@pytest.mark.slow
def test_finetune_imported_captioner_on_real_photos(tmp_path):
    folder = tmp_path / "ved"
    make_ved(folder)
    ckpt = import_pretrained(folder, tmp_path / "imported")
    run = tmp_path / "run"
    args = [
        "pixel-llm",
        "train",
        "--init-from",
        str(ckpt),
        "--data",
        str(write_data(tmp_path)),
        "--out",
        str(run),
        "--quiet",
        "--set",
        "trainer.max_steps=40",
        "--set",
        "trainer.batch_size=4",
        "--set",
        "trainer.learning_rate=3e-3",
        "--set",
        "trainer.lr_scheduler=constant",
        "--set",
        "trainer.warmup_steps=0",
        "--set",
        "trainer.log_interval=1",
        "--set",
        "trainer.use_amp=false",
        "--set",
        "trainer.val_interval=1000",
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "loaded" in result.output and "0 start fresh" in result.output
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses

    from geometry_os.plugins.amp_trainer.run_state import read_latest

    latest = read_latest(run)
    model, tok = PixelLLM.from_pretrained(latest)
    saved = json.loads((latest / "config.json").read_text())
    assert saved["tokenizer"]["component"] == "hf" and tok.eos_token_id == tok.bos_token_id == len(tok) - 1
    imported, _ = PixelLLM.from_pretrained(ckpt)
    keys = [k for k in imported.config.model_dict() if k.startswith("image_")]
    assert {k: getattr(model.config, k) for k in keys} == {k: getattr(imported.config, k) for k in keys}
    assert model.config.image_mean == (0.5, 0.5, 0.5)  # ViTImageProcessor's, not ImageNet's
    out = CliRunner().invoke(cli, ["pixel-llm", "caption", str(PHOTOS / "face.jpg"), "--checkpoint", str(latest)])
    assert out.exit_code == 0, out.output
    # what the command printed is the imported tokenizer's text of the checkpoint's preprocessing of the photo
    from geometry_os.systems.pixel_llm.captioning import preprocessing_config
    from geometry_os.systems.pixel_llm.data import build_transform, load_image
    from geometry_os.systems.pixel_llm.inference import generate_caption

    config = preprocessing_config(model)
    pixels = build_transform(config)(
        load_image(str(PHOTOS / "face.jpg"), config.max_image_pixels, draft_size=config.image_size)
    )
    ids = generate_caption(model, pixels[None], tokenizer=tok)
    text = out.output.rstrip("\n").split("\t", 1)[1]
    assert text == tok.decode(ids[0]) and text.strip()
    print(losses[0], losses[-1], repr(text))


def test_init_from_gpt2_lists_fresh_cross_attention(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    hf_tok = save_gpt2_tokenizer(folder)
    torch.manual_seed(0)
    ref = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(hf_tok),
            n_positions=32,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=len(hf_tok) - 1,
            eos_token_id=len(hf_tok) - 1,
        )
    )
    perturb(ref)
    ref.save_pretrained(str(folder))
    args = [
        "pixel-llm",
        "train",
        "--init-from",
        str(folder),
        "--data",
        str(write_data(tmp_path)),
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "--set",
        "trainer.max_steps=1",
        "--set",
        "trainer.batch_size=4",
        "--set",
        "trainer.use_amp=false",
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for layer in (0, 1):
        for name in ("norm_x.weight", "q_x.weight", "kv_x.weight", "kv_x.bias", "proj_x.weight"):
            assert f"  fresh: decoder.blocks.{layer}.{name}\n" in result.output
    assert "  fresh: decoder.wte.weight" not in result.output
    assert "  fresh: encoder.patch_embed.weight" in result.output  # the encoder of a decoder-only import is new too


def test_init_from_refuses_an_unexplained_shape_mismatch(tmp_path):
    folder = tmp_path / "ved"
    make_ved(folder)
    ckpt = import_pretrained(folder, tmp_path / "imported")
    args = [
        "pixel-llm",
        "train",
        "--init-from",
        str(ckpt),
        "--data",
        str(write_data(tmp_path)),
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "--set",
        "trainer.max_steps=1",
        "--config",
        str(ckpt / "config.json"),
    ]
    model_cfg = json.loads((ckpt / "config.json").read_text())["model"]
    model_cfg["text_embed_dim"] = 64
    (tmp_path / "cfg.json").write_text(json.dumps(model_cfg))
    args[args.index("--config") + 1] = str(tmp_path / "cfg.json")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "tensor decoder.wte.weight has shape" in result.output or "decoder.wpe.weight" in result.output


def test_init_from_own_checkpoint_explains_a_new_vocabulary(tmp_path):
    from geometry_os.plugins.amp_trainer.init_from import apply_init, describe, read_init_source
    from geometry_os.systems.pixel_llm import create_pixel_llm

    torch.manual_seed(0)
    create_pixel_llm(vocab_size=64, preset="tiny").save_pretrained(tmp_path / "a")
    source = read_init_source(tmp_path / "a")
    model = create_pixel_llm(vocab_size=80, preset="tiny")
    report = apply_init(model, source)
    assert report["vocabulary"] == ["decoder.wte.weight"] and report["fresh"] == ["decoder.wte.weight"]
    assert report["dropped"] == [] and len(report["loaded"]) == len(model.state_dict()) - 1
    assert torch.equal(
        model.state_dict()["decoder.blocks.0.kv_x.weight"], source.weights["decoder.blocks.0.kv_x.weight"]
    )
    assert "vocab_size differs (64 -> 80)" in "\n".join(describe(report, source))
