"""The cost of ``rerank="word_dropout"``: the cached scorer against one decoder forward per position.

``rerank.word_dropout_scores`` scores every beam candidate with, at each position, the word before it
replaced by ``<pad>``. It runs one cached decoder step per position over two rows per candidate (the
caption, and its prefix with ``<pad>`` at the newest position), the image's cross-attention K/V
computed once for all its candidates. The plain algorithm (``per_position_scores`` below) runs one
full decoder forward per position over the candidates' prefixes: O(T^2) tokens, the cross-attention K/V
recomputed at each. This script times both on the same candidates (random weights; random lengths up
to ``--length`` tokens, ``--beams`` per image), checks that they agree, and times the beam search the
candidates would come from (``num_beams`` = ``--beams``, ``--length`` tokens, no early end), so that
the re-ranking's share of a re-ranked caption shows::

    python benchmarks/bench_rerank.py --presets small --images 1 8 --repeats 5 --threads 1 --out benchmarks/results/rerank/avx2_small_t1.json
    python benchmarks/bench_rerank.py --presets base --images 1 --repeats 3 --threads 1 --out benchmarks/results/rerank/avx2_base_t1.json
    python benchmarks/bench_rerank.py --quick         # tiny preset, one repeat (a smoke test)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, timed

from geometry_os.fileio import write_json_atomic
from geometry_os.systems.pixel_llm import create_pixel_llm
from geometry_os.systems.pixel_llm.inference import generate_caption
from geometry_os.systems.pixel_llm.rerank import caption_lengths, word_dropout_scores


@torch.no_grad()
def per_position_scores(
    decoder: Any, features: torch.Tensor, sequences: torch.Tensor, pad_token_id: int, eos_token_id: int
) -> torch.Tensor:
    """The word-dropout scores by one decoder forward per position (features: one row per caption)."""
    lengths = caption_lengths(sequences, eos_token_id)
    total = torch.zeros(sequences.shape[0], dtype=torch.float32)
    for t in range(1, sequences.shape[1]):
        rows = (lengths > t).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        context = sequences[rows, :t].clone()
        if t >= 2:
            context[:, t - 1] = pad_token_id
        logits = decoder(context, features[rows])[:, -1].float()
        total[rows] += torch.log_softmax(logits, dim=-1).gather(1, sequences[rows, t : t + 1]).squeeze(1)
    return total


def candidates(images: int, beams: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """(images x beams, length) ids: ``<bos>``, words, ``<eos>`` at a random position (or none), then ``<pad>``."""
    g = torch.Generator().manual_seed(seed)
    rows = images * beams
    ids = torch.randint(4, vocab, (rows, length), generator=g)
    ids[:, 0] = 1
    ends = torch.randint(length // 2, length + 1, (rows,), generator=g)  # == length: cut at the cap, no <eos>
    for r, end in enumerate(ends.tolist()):
        if end < length:
            ids[r, end] = 2
            ids[r, end + 1 :] = 0
    return ids


def run_case(preset: str, images: int, beams: int, length: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = create_pixel_llm(preset=preset, vocab_size=1000).eval()
    c = model.config
    pixels = torch.rand(images, 3, c.image_size, c.image_size, generator=torch.Generator().manual_seed(seed))
    sequences = candidates(images, beams, length, c.vocab_size, seed)
    with torch.inference_mode():
        features = model.encode(pixels)
        per_row = features.repeat_interleave(beams, 0)
        cases: dict[str, Callable[[], Any]] = {
            "cached": lambda: word_dropout_scores(model.decoder, features, sequences, c.pad_token_id, c.eos_token_id),
            "per_position": lambda: per_position_scores(
                model.decoder, per_row, sequences, c.pad_token_id, c.eos_token_id
            ),
            "beam_search": lambda: generate_caption(
                model, pixels, num_beams=beams, max_length=length, min_length=length
            ),
        }
        for fn in cases.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in cases}
        scores: dict[str, torch.Tensor] = {}
        for _ in range(repeats):  # alternating, so that drifts of a shared machine hit every case alike
            for name, fn in cases.items():
                elapsed, result = timed(fn)
                times[name].append(1000 * elapsed)
                if name != "beam_search":
                    scores[name] = result
    gap = (scores["cached"] - scores["per_position"]).abs().max().item()
    med = {name: statistics.median(v) for name, v in times.items()}
    return {
        "preset": preset,
        "images": images,
        "beams": beams,
        "length": length,
        "ms": {name: {"median": med[name], "min": min(v), "max": max(v)} for name, v in times.items()},
        "per_position_over_cached": med["per_position"] / med["cached"],
        "cached_share_of_reranked_caption": med["cached"] / (med["cached"] + med["beam_search"]),
        "per_position_share_of_reranked_caption": med["per_position"] / (med["per_position"] + med["beam_search"]),
        "max_score_difference_nats": gap,
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| preset | images x beams | tokens | scorer, cached (ms) | scorer, per position (ms) | per position / cached "
        "| beam search (ms) | re-ranking's share: cached / per position |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ms = r["ms"]
        cell = {k: f"{v['median']:.1f} ({v['min']:.1f}-{v['max']:.1f})" for k, v in ms.items()}
        lines.append(
            f"| {r['preset']} | {r['images']} x {r['beams']} | {r['length']} | {cell['cached']} | "
            f"{cell['per_position']} | **{r['per_position_over_cached']:.2f}x** | {cell['beam_search']} | "
            f"{100 * r['cached_share_of_reranked_caption']:.0f} % / "
            f"{100 * r['per_position_share_of_reranked_caption']:.0f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument("--images", nargs="+", type=int, default=[1, 8], help="images per call (batch sizes)")
    parser.add_argument("--beams", type=int, default=10, help="candidates per image (num_beams)")
    parser.add_argument("--length", type=int, default=20, help="tokens per candidate, <bos> included")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="tiny preset, one image count, one repeat")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.presets, args.images, args.repeats, args.beams, args.length = ["tiny"], [2], 1, 4, 8
    results = []
    for preset in args.presets:
        for images in args.images:
            result = run_case(preset, images, args.beams, args.length, args.repeats)
            results.append(result)
            print(markdown([result]).splitlines()[-1], flush=True)
    report = {
        "meta": {**machine_description(), "repeats": args.repeats, "command": " ".join(sys.argv)},
        "results": results,
    }
    print(markdown(results))
    if args.out:
        write_json_atomic(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
