"""Pixel LLM in one minute: model creation, a forward pass, a training loop, caption generation and
the inference API, on the built-in synthetic geometry scenes (nothing is downloaded).

    cd geometry_os/systems/pixel_llm
    python demo_pixel_llm.py

For the full job (the small model, about 10 minutes, a report with pictures) run ``geo-os pixel-llm demo``.

Kept for the original description's API: its "Examples" section runs this file from this folder
(pinned by tests/test_seed_surfaces.py and tests/test_snippets.py).
"""

from __future__ import annotations

import tempfile

import torch

from geometry_os.systems.pixel_llm import PixelLLMTrainer, TrainerConfig, create_pixel_llm, generate_caption
from geometry_os.systems.pixel_llm.data import create_dataloader
from geometry_os.systems.pixel_llm.inference import GenerationConfig, beam_search_decode
from geometry_os.systems.pixel_llm.protocols import SYNTHETIC_DATA
from geometry_os.systems.pixel_llm.resolution import current_components


def main() -> None:
    """Run the five demo steps (data, model, forward pass, a short training loop, captions), printing each."""
    torch.manual_seed(0)
    shapes = current_components().serving("dataset", SYNTHETIC_DATA)  # the synthetic scenes
    train_set = shapes.build({"n": 512, "seed": 0, "split": "train", "image_size": 32})
    tokenizer = train_set.tokenizer
    print(f"1. data: {len(train_set)} synthetic scenes, e.g. {train_set.captions[0]!r}; vocabulary {len(tokenizer)}")

    model = create_pixel_llm(vocab_size=len(tokenizer), preset="tiny")
    print(f"2. model: tiny preset, {model.num_parameters():,} parameters")

    batch = next(iter(create_dataloader(train_set, batch_size=8, shuffle=False)))
    out = model(batch["images"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    print(f"3. forward pass: logits {tuple(out.logits.shape)}, loss {out.loss.item():.3f}")

    with tempfile.TemporaryDirectory() as checkpoint_dir:
        config = TrainerConfig(
            learning_rate=3e-3,
            max_steps=60,
            warmup_steps=5,
            batch_size=32,
            use_amp=False,
            checkpoint_dir=checkpoint_dir,
            log_interval=20,
        )
        loader = PixelLLMTrainer.make_dataloader(train_set, config.batch_size, shuffle=True, seed=0)
        summary = PixelLLMTrainer(model, config, loader, tokenizer=tokenizer, quiet=True).train()
        out = model(batch["images"], batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        print(f"4. training loop: {summary['global_step']} steps, loss now {out.loss.item():.3f}")

    model.eval()
    images = batch["images"][:2]
    ids = model.generate(images, max_length=20)
    print("5. captions (greedy):", [tokenizer.decode(row.tolist()) for row in ids])

    sampled = generate_caption(
        model, images, config=GenerationConfig(max_length=20, do_sample=True, top_p=0.9, temperature=0.7, seed=0)
    )
    beams = beam_search_decode(model, images, num_beams=3, max_length=20)
    print("6. inference API: sampled", [tokenizer.decode(r.tolist()) for r in sampled])
    print("                  beam-3 ", [tokenizer.decode(r.tolist()) for r in beams])
    print("   true captions:        ", batch["captions"][:2])


if __name__ == "__main__":
    main()
