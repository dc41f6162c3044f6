"""Tiny random reference models built with the reference libraries and saved in their real file layouts
(nothing is downloaded). Every parameter is perturbed so that norms and biases are non-trivial."""

from __future__ import annotations

from pathlib import Path

import torch

CAPTIONS = [
    "a red circle left of a blue square",
    "two cats sleeping on a sofa",
    "a dog runs on the beach",
    "a man riding a bicycle down the street",
    "a plate of food with broccoli",
]
EOT = "<|endoftext|>"


def gpt2_tokenizer_backend():
    """A GPT-2-style byte-level BPE (no prefix space, ``<|endoftext|>`` last), trained on a few captions."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CAPTIONS * 4, trainer=trainer)
    tok.add_special_tokens([EOT])
    return tok


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def save_gpt2_tokenizer(folder: Path, vocab_merges: bool = False):
    """HF ``GPT2TokenizerFast`` files in ``folder`` (tokenizer.json, or vocab.json + merges.txt); returns it."""
    from transformers import GPT2TokenizerFast

    backend = gpt2_tokenizer_backend()
    hf = GPT2TokenizerFast(tokenizer_object=backend, bos_token=EOT, eos_token=EOT, unk_token=EOT)
    hf.save_pretrained(str(folder))
    if vocab_merges:  # the slow tokenizer's files: <|endoftext|> is in vocab.json, as in GPT-2's
        import json

        backend.model.save(str(folder))
        vocab = json.loads((folder / "vocab.json").read_text())
        vocab[EOT] = backend.token_to_id(EOT)
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "tokenizer.json").unlink()
    return hf


def make_ved(folder: Path, enc_dim: int = 48, dec_dim: int = 32):
    """ViT (32 px, patch 8, 2 layers) + GPT-2 (2 layers) VisionEncoderDecoderModel with different widths."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    hf_tok = save_gpt2_tokenizer(folder)
    eot = hf_tok.convert_tokens_to_ids(EOT)
    torch.manual_seed(0)
    enc = ViTModel(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=enc_dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=2 * enc_dim,
        ),
        add_pooling_layer=False,
    )
    dec = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(hf_tok),
            n_positions=32,
            n_embd=dec_dim,
            n_layer=2,
            n_head=2,
            add_cross_attention=True,
            is_decoder=True,
            bos_token_id=eot,
            eos_token_id=eot,
        )
    )
    model = VisionEncoderDecoderModel(encoder=enc, decoder=dec)
    model.config.decoder_start_token_id = model.config.pad_token_id = model.config.eos_token_id = eot
    perturb(model)
    model.eval()
    model.save_pretrained(str(folder))
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return model, hf_tok
