"""Captioning a folder of image files: Pixel LLM's ``caption`` path vs HuggingFace, same weights.

What a user captioning a folder waits for: read and decode the files, preprocess, encode, decode
greedily until every caption has ended, detokenize. The workload is made identical, so the ratio
measures the code paths only:

1. a HF ``VisionEncoderDecoderModel`` (ViT + GPT-2 with cross-attention, SDPA; ``hf_reference.py``
   sizes) with a byte-level BPE tokenizer is trained for ``--train-steps`` steps on the synthetic
   scenes, so that its captions end where a caption should (1 to 3 shapes), and saved
   with ``save_pretrained`` and a ``ViTImageProcessor``;
2. ``geo-os pixel-llm import`` (``import_pretrained``) converts that folder, so ours holds the same
   weights, tokenizer and preprocessing;
3. ``--images`` test scenes are written as JPEG (or PNG) files at ``--file-size`` pixels, as photos
   are larger than the model's input;
4. ours: ``caption_images`` (what ``geo-os pixel-llm caption FOLDER`` runs) at ``--batch-size``;
   HF: the loop its documentation shows (``PIL.Image.open``, the image processor, ``generate``,
   ``batch_decode``), at the same batch size and ``max_new_tokens``; ``--dtype bfloat16`` puts both
   models' weights and inputs in bf16 (HF: ``from_pretrained(..., dtype=torch.bfloat16)``).

Both run alternately in one process, ``--repeats`` times, with a third run of ours that reads each
batch's files only when it is reached (``threads=0``: the read-ahead A/B); the table gives median
images/s (min-max) and ours/HF, and the fraction of images whose two captions are the same words::

    python benchmarks/bench_caption_folder.py --threads 1
    python benchmarks/bench_caption_folder.py --threads 1 --dtype bfloat16   # where bf16 is native
    python benchmarks/bench_caption_folder.py --quick          # tiny preset, a smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine_description, timed  # noqa: E402
from hf_reference import build_hf_model  # noqa: E402

from geometry_os.fileio import write_json_atomic  # noqa: E402
from geometry_os.systems.pixel_llm.captioning import caption_images, loader_threads  # noqa: E402
from geometry_os.systems.pixel_llm.config import PRESETS  # noqa: E402

EOT = "<|endoftext|>"


def shapes(n: int, seed: int, split: str, size: int) -> Any:
    from geometry_os.systems.pixel_llm.plugin_api import get_component

    return get_component("dataset", "shapes").build({"n": n, "seed": seed, "split": split, "image_size": size})


def hf_tokenizer(captions: list[str]) -> Any:
    """A GPT-2-style byte-level BPE trained on ``captions``, ``<|endoftext|>`` as bos, eos and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[EOT], show_progress=False
    )
    tok.train_from_iterator(captions, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT, unk_token=EOT)


def train_hf(folder: Path, preset: str, steps: int, batch: int, seed: int) -> None:
    """Train the HF reference on synthetic scenes for ``steps`` steps and save it (model, tokenizer,
    image processor) in ``folder``."""
    from transformers import ViTImageProcessor

    sizes = PRESETS[preset]
    train = shapes(steps * batch, seed, "train", sizes["image_size"])
    tokenizer = hf_tokenizer(train.captions)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    torch.manual_seed(seed)
    model = build_hf_model({**sizes, "vocab_size": len(tokenizer)}).train()
    for cfg in (model.config, model.config.decoder, model.generation_config):
        cfg.decoder_start_token_id = cfg.bos_token_id = cfg.eos_token_id = cfg.pad_token_id = eot
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    pixels = (train.images.float() / 255 - 0.5) / 0.5  # ViTImageProcessor's defaults: rescale, mean = std = 0.5
    start = time.perf_counter()
    for step in range(steps):
        rows = slice(step * batch, (step + 1) * batch)
        ids = tokenizer([c + EOT for c in train.captions[rows]], padding=True, return_tensors="pt")
        labels = ids.input_ids.masked_fill(ids.attention_mask == 0, -100)
        loss = model(pixel_values=pixels[rows], labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            print(
                f"  HF training step {step + 1}/{steps}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)"
            )
    model.eval().save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    ViTImageProcessor(size={"height": sizes["image_size"], "width": sizes["image_size"]}).save_pretrained(str(folder))


def write_images(folder: Path, n: int, seed: int, render: int, file_size: int, fmt: str) -> list[Path]:
    """``n`` test scenes rendered at ``render`` px, upscaled (bicubic) to ``file_size`` px and saved."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    test = shapes(n, seed, "test", render)
    paths = []
    for i in range(n):
        image = Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).resize(
            (file_size, file_size), Image.Resampling.BICUBIC
        )
        path = folder / f"scene-{i:04d}.{'jpg' if fmt == 'jpeg' else 'png'}"
        image.save(path, **({"quality": 90} if fmt == "jpeg" else {}))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--quick", action="store_true", help="tiny preset, few images and steps (smoke test)")
    parser.add_argument("--images", type=int, default=256, help="number of image files")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--file-size", type=int, default=512, help="side of the image files in pixels")
    parser.add_argument("--train-steps", type=int, default=300, help="HF training steps before the timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="both models' weights and inputs (bfloat16: fast where the CPU computes it natively)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the model and images here (reused if there)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.images, args.train_steps, args.repeats, args.file_size = "tiny", 64, 30, 1, 128
    warnings.filterwarnings("ignore")

    import transformers
    from transformers import AutoTokenizer, VisionEncoderDecoderModel, ViTImageProcessor

    from geometry_os.systems.pixel_llm.plugin_api import GenerationConfig, PixelLLM, pretrained_importer

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory()
        args.workdir = Path(tmp.name)
    hf_dir, ours_dir = args.workdir / f"hf-{args.preset}", args.workdir / f"ours-{args.preset}"
    image_dir = args.workdir / f"images-{args.format}-{args.file_size}-{args.images}"
    if not (hf_dir / "config.json").is_file():
        train_hf(hf_dir, args.preset, args.train_steps, 32, seed=0)
    if not (ours_dir / "config.json").is_file():
        pretrained_importer()(hf_dir, ours_dir)
    paths = sorted(image_dir.glob("scene-*")) or write_images(
        image_dir, args.images, 1, PRESETS[args.preset]["image_size"], args.file_size, args.format
    )

    if args.threads:  # for the timing; the HF training above uses every core
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # the unused ViT pooler "MISSING", the pad = eos notice
    dtype = getattr(torch, args.dtype)
    hf = VisionEncoderDecoderModel.from_pretrained(str(hf_dir), dtype=dtype).eval()
    processor = ViTImageProcessor.from_pretrained(str(hf_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    ours, ours_tokenizer = PixelLLM.from_pretrained(ours_dir)
    ours.to(dtype).eval()
    batch, new = args.batch_size, args.max_new_tokens
    generation = GenerationConfig(max_new_tokens=new)

    def run_ours(threads: int | None = None) -> list[str]:
        results = caption_images(ours, ours_tokenizer, paths, generation, batch_size=batch, threads=threads)
        return [r.caption or "" for r in results]

    def run_ours_in_turn() -> list[str]:  # the A/B: each batch's files read when it is reached
        return run_ours(threads=0)

    def run_hf() -> list[str]:
        from PIL import Image

        captions: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(paths), batch):
                images = [Image.open(p).convert("RGB") for p in paths[start : start + batch]]
                pixel_values = processor(images=images, return_tensors="pt").pixel_values.to(dtype)
                out = hf.generate(pixel_values=pixel_values, max_new_tokens=new, do_sample=False, num_beams=1)
                captions += [c.strip() for c in tokenizer.batch_decode(out, skip_special_tokens=True)]
        return captions

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    times: dict[str, list[float]] = {"ours": [], "hf": [], "ours_no_read_ahead": []}
    captions: dict[str, list[str]] = {}
    for i in range(args.repeats + 1):  # the first round warms up (file cache, allocator, lazy imports)
        for name, fn in (("ours", run_ours), ("hf", run_hf), ("ours_no_read_ahead", run_ours_in_turn)):
            seconds, captions[name] = timed(fn)
            if i:
                times[name].append(seconds)
    words = [len(c.split()) for c in captions["ours"]]
    same = sum(a.split() == b.split() for a, b in zip(captions["ours"], captions["hf"])) / len(paths)
    rate = {name: sorted(len(paths) / t for t in ts) for name, ts in times.items()}
    result = {
        "meta": {
            **machine_description(),
            "load_before": load_before,
            "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "python": platform.python_version(),
            "command": "python benchmarks/bench_caption_folder.py " + " ".join(argv or sys.argv[1:]),
        },
        "preset": args.preset,
        "images": len(paths),
        "format": args.format,
        "file_size": args.file_size,
        "batch_size": batch,
        "max_new_tokens": new,
        "dtype": args.dtype,
        "train_steps": args.train_steps,
        "loader_threads": loader_threads("cpu"),
        "caption_words": {"min": min(words), "median": statistics.median(words), "max": max(words)},
        "same_captions": same,
        "examples": [{"ours": a, "hf": b} for a, b in list(zip(captions["ours"], captions["hf"]))[:5]],
        **{
            name: {"images_per_s": statistics.median(r), "min": r[0], "max": r[-1], "seconds": times[name]}
            for name, r in rate.items()
        },
    }
    result["ratio"] = result["ours"]["images_per_s"] / result["hf"]["images_per_s"]
    print(
        f"\n{result['meta']['machine']}; {len(paths)} {args.format} files of {args.file_size} px, preset "
        f"{args.preset}, batch {batch}, {args.dtype}, greedy, <= {new} new tokens; captions of {words and min(words)}-"
        f"{max(words)} words; same captions {100 * same:.1f} %"
    )
    cell = "{0[images_per_s]:.1f} ({0[min]:.1f}-{0[max]:.1f})".format
    print(
        f"| ours images/s ({result['loader_threads']} loader threads) | HF images/s | ours/HF | ours, files read in turn |"
    )
    print("|---|---|---|---|")
    print(
        f"| {cell(result['ours'])} | {cell(result['hf'])} | **{result['ratio']:.2f}x** "
        f"| {cell(result['ours_no_read_ahead'])} |"
    )
    if args.out:
        write_json_atomic(args.out, result)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
