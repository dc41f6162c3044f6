"""Imports of an encoder alone (HF ViT, timm, torchvision, CLIP, SigLIP) and of GPT-2 alone, against the
reference libraries' own outputs; the ``hf`` tokenizer's special ids; preprocessing presets."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pretrained_refs import perturb, save_gpt2_tokenizer

from geometry_os.plugins.pretrained.convert import import_pretrained
from geometry_os.systems.pixel_llm.modeling import PixelLLM

transformers = pytest.importorskip("transformers")

PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def encoder_of(out):
    model, _ = PixelLLM.from_pretrained(out)
    return model.encoder


def check_tokens(ours, ref):
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4


def test_hf_vit(tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ref = ViTModel(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=96,
        )
    ).eval()
    perturb(ref)
    ref.save_pretrained(str(tmp_path / "vit"))
    out = import_pretrained(tmp_path / "vit", tmp_path / "ckpt", preset="tiny")
    with torch.no_grad():
        check_tokens(encoder_of(out)(PIXELS), ref(pixel_values=PIXELS).last_hidden_state)
    fresh = json.loads((out / "config.json").read_text())["import"]["fresh"]
    assert fresh and all(name.startswith("decoder.") for name in fresh)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_clip_and_siglip_vision_towers(tmp_path, kind):
    if kind == "clip":
        from transformers import CLIPVisionConfig as Config
        from transformers import CLIPVisionModel as Model
    else:
        from transformers import SiglipVisionConfig as Config
        from transformers import SiglipVisionModel as Model
    torch.manual_seed(0)
    ref = Model(
        Config(
            image_size=32,
            patch_size=8,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=96,
        )
    ).eval()
    perturb(ref)
    ref.save_pretrained(str(tmp_path / kind))
    out = import_pretrained(tmp_path / kind, tmp_path / "ckpt", preset="tiny")
    with torch.no_grad():
        check_tokens(encoder_of(out)(PIXELS), ref(pixel_values=PIXELS).last_hidden_state)


def test_timm_vit(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    ref = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=128,
        depth=2,
        num_heads=2,
        num_classes=0,
    ).eval()
    perturb(ref)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    # a timm Hub folder keeps the pretrained_cfg beside the weights: its preprocessing is imported
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architecture": "vit_base_patch16_224",
                "pretrained_cfg": {
                    "interpolation": "bicubic",
                    "crop_pct": 0.9,
                    "crop_mode": "center",
                    "mean": [0.5, 0.5, 0.5],
                    "std": [0.5, 0.5, 0.5],
                },
            }
        )
    )
    out = import_pretrained(tmp_path / "model.safetensors", tmp_path / "ckpt", preset="tiny")
    with torch.no_grad():
        check_tokens(encoder_of(out)(PIXELS), ref.forward_features(PIXELS))
    config = PixelLLM.from_pretrained(out)[0].config
    assert (config.image_interpolation, config.image_resize, config.image_crop_pct) == ("bicubic", "shorter_crop", 0.9)
    assert config.image_mean == (0.5, 0.5, 0.5) and config.encoder_options["norm_eps"] == 1e-6


def test_torchvision_vit(tmp_path):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    ref = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=128, mlp_dim=256).eval()
    perturb(ref)
    torch.save(ref.state_dict(), tmp_path / "vit_b_16.pth")
    out = import_pretrained(tmp_path / "vit_b_16.pth", tmp_path / "ckpt", preset="tiny")
    with torch.no_grad():
        x = ref._process_input(PIXELS)
        x = torch.cat([ref.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        check_tokens(encoder_of(out)(PIXELS), ref.encoder(x))


def test_gpt2_alone_self_attention_path_equals_gpt2(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    hf_tok = save_gpt2_tokenizer(folder, vocab_merges=True)
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
    ).eval()
    perturb(ref)
    ref.save_pretrained(str(folder))
    out = import_pretrained(folder, tmp_path / "ckpt", preset="tiny")
    fresh = json.loads((out / "config.json").read_text())["import"]["fresh"]
    assert "decoder.blocks.0.q_x.weight" in fresh and "decoder.blocks.1.kv_x.weight" in fresh
    assert "decoder.wte.weight" not in fresh
    model, tok = PixelLLM.from_pretrained(out)
    assert tok.encode("a dog runs", add_special_tokens=False) == hf_tok.encode("a dog runs")
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == len(tok) - 1 == 300
    assert tok.decode([300, *hf_tok.encode("a dog runs"), 300]) == "a dog runs"
    ids = torch.randint(0, len(tok), (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for block in model.decoder.blocks:  # the cross-attention output zeroed
            block.proj_x.weight.zero_()
            block.proj_x.bias.zero_()
        ours = model.decoder(ids, model.encode(PIXELS))
        check_tokens(ours, ref(input_ids=ids).logits)


def test_hf_tokenizer_eos_equals_pad_everywhere(tmp_path):
    from geometry_os.plugins.hf_tokenizer.tokenizer import HFTokenizer
    from geometry_os.systems.pixel_llm.data import CaptionCollator, truncate
    from geometry_os.systems.pixel_llm.inference import generate_caption

    eot = save_gpt2_tokenizer(tmp_path).convert_tokens_to_ids("<|endoftext|>")
    tok = HFTokenizer.from_file(tmp_path / "tokenizer.json", bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    ids = tok.encode("a dog runs on the beach")
    assert ids[0] == ids[-1] == eot and eot not in ids[1:-1]
    assert truncate(ids, 4, tok.eos_token_id) == [*ids[:3], eot]
    batch = CaptionCollator(tok.pad_token_id)(
        [
            {"image": torch.zeros(3, 2, 2), "input_ids": torch.tensor(x), "caption": "", "image_path": "", "index": 0}
            for x in (ids, ids[:3])
        ]
    )
    assert batch["labels"][0, -1] == eot  # the final eos is learned although it equals pad
    assert (batch["labels"][1, 3:] == -100).all()
    tok.save(tmp_path / "saved.json")
    again = HFTokenizer.load(tmp_path / "saved.json")
    assert (again.bos_token_id, again.eos_token_id, again.pad_token_id) == (eot, eot, eot)
    assert again.decode([eot, *ids[1:-1], eot, eot]) == tok.decode(ids) == "a dog runs on the beach"
    # generation takes the tokenizer's ids, not the defaults 1 / 2 / 0
    from geometry_os.systems.pixel_llm import create_pixel_llm

    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=len(tok), preset="tiny", bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    with torch.no_grad():
        model.decoder.wte.weight[eot].mul_(0)
    seqs = generate_caption(model.eval(), PIXELS, max_length=6, tokenizer=tok)
    assert (seqs[:, 0] == eot).all()
    with pytest.raises(ValueError, match="pad_token_id=400"):
        HFTokenizer.from_file(
            tmp_path / "tokenizer.json", bos_token_id=eot, eos_token_id=eot, pad_token_id=400
        )  # outside the vocabulary


def test_preprocessing_of_a_jpeg_matches_hf_and_timm(tmp_path):
    from transformers import CLIPImageProcessor, ViTImageProcessor

    from geometry_os.plugins.pretrained.preprocessing import hf_preprocessing, timm_preprocessing
    from geometry_os.systems.pixel_llm.data import build_transform
    from geometry_os.systems.pixel_llm.data_config import DatasetConfig

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(base).resize((160, 120), Image.Resampling.BICUBIC).save(tmp_path / "p.jpg", quality=90)
    image = Image.open(tmp_path / "p.jpg").convert("RGB")

    def ours(fields, size):
        opts = {
            "image_size": size,
            "mean": fields.get("image_mean", (0.5,) * 3),
            "std": fields.get("image_std", (0.5,) * 3),
            "interpolation": fields.get("image_interpolation", "bilinear"),
            "resize": fields.get("image_resize", "squash"),
            "crop_pct": fields.get("image_crop_pct", 1.0),
        }
        return build_transform(DatasetConfig(**opts))(image), opts

    levels = lambda a, b, std: ((a - b).abs() * torch.tensor(std)[:, None, None] * 255).max().item()  # noqa: E731
    for processor in (
        ViTImageProcessor(size={"height": 32, "width": 32}),
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    ):
        fields = hf_preprocessing(processor.to_dict(), "test")
        mine, opts = ours(fields, 32)
        ref = processor(image, return_tensors="pt").pixel_values[0]
        assert levels(mine, ref, opts["std"]) <= 1.0 + 1e-3, type(processor).__name__  # one 8-bit level
    pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    cfg = {
        "input_size": (3, 32, 32),
        "interpolation": "bicubic",
        "crop_pct": 0.875,
        "crop_mode": "center",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    ref = create_transform(**resolve_data_config(cfg))(image)
    mine, opts = ours(timm_preprocessing(cfg), 32)
    assert levels(mine, ref, opts["std"]) <= 1.0 + 1e-3


def test_lint_data_reads_an_imported_tokenizer(tmp_path):
    from geometry_os.plugins.datasets.lint import load_vocab
    from geometry_os.plugins.hf_tokenizer.tokenizer import HFTokenizer

    eot = save_gpt2_tokenizer(tmp_path).convert_tokens_to_ids("<|endoftext|>")
    HFTokenizer.from_file(tmp_path / "tokenizer.json", bos_token_id=eot, eos_token_id=eot).save(tmp_path / "tok.json")
    loaded = load_vocab(tmp_path / "tok.json")
    assert isinstance(loaded, HFTokenizer) and loaded.eos_token_id == eot and loaded.unk_token_id is None


def test_generation_defaults_and_ids_come_from_the_model_unless_set():
    from geometry_os.systems.pixel_llm import create_pixel_llm
    from geometry_os.systems.pixel_llm.generation_config import GenerationConfig
    from geometry_os.systems.pixel_llm.inference import _model_defaults, _resolve_config

    model = create_pixel_llm(
        vocab_size=64,
        preset="tiny",
        bos_token_id=63,
        eos_token_id=63,
        pad_token_id=63,
        generation={"max_new_tokens": 5, "num_beams": 3},
    )
    config = _model_defaults(_resolve_config(GenerationConfig(), {}), model, None)
    assert (config.max_new_tokens, config.num_beams, config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        5,
        3,
        63,
        63,
        63,
    )
    config = _model_defaults(
        _resolve_config(GenerationConfig(max_length=9, num_beams=1, eos_token_id=7), {}), model, None
    )
    assert (config.max_new_tokens, config.total_length, config.num_beams, config.eos_token_id, config.bos_token_id) == (
        None,
        9,
        1,
        7,
        63,
    )

    class Tok:  # a tokenizer's ids win over the model config's
        bos_token_id, eos_token_id, pad_token_id = 10, 11, 12

    config = _model_defaults(_resolve_config(None, {}), model, Tok())
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (10, 11, 12)
    plain = create_pixel_llm(vocab_size=64, preset="tiny")  # our own models: the defaults 1 / 2 / 0, unchanged
    config = _model_defaults(_resolve_config(None, {}), plain, None)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id, config.max_length) == (1, 2, 0, 64)
    with pytest.raises(ValueError, match="generation"):
        create_pixel_llm(vocab_size=64, preset="tiny", generation={"num_beams": 0})


def test_gpt2_file_with_old_buffers_imports_and_unknown_tensors_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    from geometry_os.errors import CheckpointError

    folder = tmp_path / "gpt2"
    hf_tok = save_gpt2_tokenizer(folder)
    GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(hf_tok),
            n_positions=32,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=len(hf_tok) - 1,
            eos_token_id=len(hf_tok) - 1,
        )
    ).save_pretrained(str(folder))
    tensors = load_file(str(folder / "model.safetensors"))
    prefix = next(k for k in tensors if k.endswith("wte.weight"))[: -len("wte.weight")]
    tensors[prefix + "h.0.attn.bias"] = torch.ones(1, 1, 32, 32)  # the causal-mask buffer of old GPT-2 files
    tensors["lm_head.weight"] = tensors[prefix + "wte.weight"].clone()
    save_file(tensors, str(folder / "model.safetensors"))
    import_pretrained(folder, tmp_path / "ok", preset="tiny")
    tensors[prefix + "h.0.adapter.weight"] = torch.zeros(3)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor .*h\.0\.adapter\.weight has no counterpart"):
        import_pretrained(folder, tmp_path / "bad", preset="tiny")
