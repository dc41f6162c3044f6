"""``geo-os pixel-llm import`` of a HF VisionEncoderDecoderModel (ViT + GPT-2, different widths): logits,
greedy and beam-3 captions, decoded text and the ``caption`` command all agree with HF."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from pretrained_refs import make_ved

from geometry_os.cli import cli as main
from geometry_os.errors import CheckpointError
from geometry_os.plugins.pretrained.convert import import_pretrained
from geometry_os.systems.pixel_llm.inference import generate_caption
from geometry_os.systems.pixel_llm.modeling import PixelLLM

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def ved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ved")
    hf_model, hf_tok = make_ved(folder)
    out = import_pretrained(folder, folder.parent / "converted")
    model, tok = PixelLLM.from_pretrained(out)
    return folder, out, hf_model, hf_tok, model, tok


def images(n=3, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_projection_folded_and_config(ved):
    folder, out, hf_model, _, model, tok = ved
    assert "enc_to_dec_proj.weight" in dict(hf_model.named_parameters())
    c = model.config
    assert (c.vision_embed_dim, c.text_embed_dim, c.cross_attention_dim) == (48, 32, 48)
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert tok.bos_token_id == tok.eos_token_id == len(tok) - 1
    assert c.encoder_options["class_token"] and c.encoder_options["norm_eps"] == 1e-12
    assert json.loads((out / "config.json").read_text())["import"]["fresh"] == []


def test_logits_match_hf(ved):
    *_, hf_model, hf_tok, model, tok = ved
    pixels = images()
    ids = torch.randint(0, len(tok), (3, 9), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = tok.bos_token_id
    with torch.no_grad():
        ref = hf_model(pixel_values=pixels, decoder_input_ids=ids).logits
        ours = model(pixels, ids).logits
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("num_beams", [1, 3])
def test_captions_token_identical_to_hf_generate(ved, num_beams):
    *_, hf_model, hf_tok, model, tok = ved
    pixels = images(4, seed=2)
    with torch.no_grad():
        ref = hf_model.generate(pixel_values=pixels, max_length=16, num_beams=num_beams, do_sample=False)
    ours = generate_caption(model, pixels, max_length=16, num_beams=num_beams, tokenizer=tok)
    assert ours.tolist() == ref[:, : ours.shape[1]].tolist()
    assert (ref[:, ours.shape[1] :] == tok.pad_token_id).all()
    assert tok.batch_decode(ours) == hf_tok.batch_decode(ref, skip_special_tokens=True)


def test_tokenizer_round_trip_matches_hf(ved):
    *_, hf_tok, _, tok = ved
    for text in ["a red circle left of a blue square", "Two cats, sleeping!", "héllo wörld"]:
        ids = hf_tok.encode(text)
        assert tok.encode(text, add_special_tokens=False) == ids
        assert tok.encode(text) == [tok.bos_token_id, *ids, tok.eos_token_id]
        assert tok.decode(tok.encode(text)) == hf_tok.decode(ids, skip_special_tokens=True)


def test_caption_command_prints_hf_text(ved, tmp_path):
    folder, out, hf_model, hf_tok, model, tok = ved
    from transformers import ViTImageProcessor

    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    processor = ViTImageProcessor.from_pretrained(str(folder))
    pixels = processor(Image.open(path).convert("RGB"), return_tensors="pt").pixel_values
    with torch.no_grad():
        ref = hf_model.generate(
            pixel_values=pixels, max_new_tokens=20
        )  # transformers 5 defaults: greedy, 20 new tokens
    expected = hf_tok.decode(ref[0], skip_special_tokens=True)
    result = CliRunner().invoke(  # HF's fp32 captions: --dtype auto would pick bf16 where it is native
        main, ["pixel-llm", "caption", str(path), "--checkpoint", str(out), "--dtype", "float32"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip("\n") == f"{path}\t{expected}"


def test_unknown_architecture_and_missing_tensor_are_one_line(tmp_path, ved):
    folder = ved[0]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="unknown architecture model_type='llama'"):
        import_pretrained(bad, tmp_path / "o1")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["decoder.transformer.h.1.crossattention.q_attn.weight"]
    (bad / "config.json").write_text((folder / "config.json").read_text())
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"missing tensor decoder\.transformer\.h\.1\.crossattention\.q_attn\.weight"
    ):
        import_pretrained(bad, tmp_path / "o2")
    result = CliRunner().invoke(main, ["pixel-llm", "import", str(bad), "--out", str(tmp_path / "o3")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "missing tensor decoder.transformer.h.1.crossattention.q_attn.weight" in result.output
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["decoder.transformer.h.0.mlp.c_fc.weight"] = tensors["decoder.transformer.h.0.mlp.c_fc.weight"][
        :, :100
    ].contiguous()
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"tensor decoder\.transformer\.h\.0\.mlp\.c_fc\.weight has shape \(32, 100\)"
    ):
        import_pretrained(bad, tmp_path / "o4")


def test_caption_images_one_liner_matches_the_command(ved, tmp_path):
    folder, out, hf_model, hf_tok, model, tok = ved
    from geometry_os.systems.pixel_llm import caption_images

    rng = np.random.default_rng(1)
    path = tmp_path / "a.jpg"
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
    pil = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    results = caption_images([str(path), pil], checkpoint=out)
    assert [r["image"] for r in results] == [str(path), None]
    assert all(isinstance(r["caption"], str) and r["score"] <= 0 for r in results)
    command = CliRunner().invoke(  # caption_images captions in fp32 by default
        main, ["pixel-llm", "caption", str(path), "--checkpoint", str(out), "--json", "--dtype", "float32"]
    )
    assert json.loads(command.stdout)[0]["caption"] == results[0]["caption"]
    # the PIL image goes through the same preprocessing as HF's processor would give it
    from transformers import ViTImageProcessor

    pixels = ViTImageProcessor.from_pretrained(str(folder))(pil, return_tensors="pt").pixel_values
    with torch.no_grad():
        ref = hf_model.generate(pixel_values=pixels, max_new_tokens=20)
    assert results[1]["caption"] == hf_tok.decode(ref[0], skip_special_tokens=True)
    assert caption_images(pil, model=model, tokenizer=tok, num_beams=3)[0]["caption"] == hf_tok.decode(
        hf_model.generate(pixel_values=pixels, num_beams=3, max_new_tokens=20)[0], skip_special_tokens=True
    )


def test_pytorch_model_bin_and_vocab_merges_give_the_same_checkpoint(ved, tmp_path):
    import shutil

    from safetensors.torch import load_file

    folder, out, *_, model, tok = ved
    other = tmp_path / "bin"
    shutil.copytree(folder, other)
    torch.save(load_file(str(other / "model.safetensors")), other / "pytorch_model.bin")
    (other / "model.safetensors").unlink()
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(other / "tokenizer.json"))
    backend.model.save(str(other))  # vocab.json + merges.txt; <|endoftext|> in vocab.json, as in GPT-2's
    vocab = json.loads((other / "vocab.json").read_text())
    (other / "vocab.json").write_text(json.dumps({**vocab, "<|endoftext|>": backend.token_to_id("<|endoftext|>")}))
    (other / "tokenizer.json").unlink()
    model2, tok2 = PixelLLM.from_pretrained(import_pretrained(other, tmp_path / "converted"))
    for (name, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), name
    text = "a man riding a bicycle down the street"
    assert tok2.encode(text) == tok.encode(text) and tok2.decode(tok.encode(text)) == text
