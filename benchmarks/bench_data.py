"""Input-pipeline throughput: can the data side keep a CPU trainer (~100 images/s) fed?

Measures, in images/s: scene sampling and rendering; PNG files written by ``make-shapes`` decoded and
transformed by ``ImageTextDataset`` through ``create_dataloader`` with 0/1/2 workers; the in-memory
``ShapesDataset`` (pre-rendering, then batching). Prints a table; ``--out`` also writes JSON.

    python benchmarks/bench_data.py --n 2000 --out bench_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

from geometry_os.plugins.datasets.commands import make_shapes
from geometry_os.plugins.datasets.shapes import VOCABULARY, render_scene, sample_scene
from geometry_os.plugins.datasets.shapes_dataset import ShapesDataset
from geometry_os.plugins.simple_vocab.vocab import SimpleVocabulary
from geometry_os.systems.pixel_llm.data import ImageTextDataset, create_dataloader
from geometry_os.systems.pixel_llm.data_config import DatasetConfig


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def loader_rate(dataset, batch_size: int, workers: int) -> dict:
    """One pass over ``dataset``; ``steady`` excludes the first batch (worker start-up, first decode)."""
    loader = create_dataloader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(0)
    )
    start = time.perf_counter()
    first = None
    seen = 0
    for batch in loader:
        seen += len(batch["indices"])
        if first is None:
            first, first_count = time.perf_counter(), seen
    end = time.perf_counter()
    return {
        "images": seen,
        "seconds": round(end - start, 3),
        "images_per_s": rate(seen, end - start),
        "steady_images_per_s": rate(seen - first_count, end - first),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="scenes written by make-shapes (all splits)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    vocab = SimpleVocabulary([" ".join(VOCABULARY)])
    rows: list[tuple[str, dict]] = []

    rng = random.Random(0)
    t = time.perf_counter()
    scenes = [sample_scene(rng) for _ in range(2000)]
    rows.append(("sample_scene", {"images_per_s": rate(2000, time.perf_counter() - t)}))
    t = time.perf_counter()
    for scene in scenes:
        render_scene(scene, args.image_size)
    rows.append((f"render_scene {args.image_size}px", {"images_per_s": rate(2000, time.perf_counter() - t)}))

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        make_shapes.main(
            ["--out", tmp, "--n", str(args.n), "--image-size", str(args.image_size)], standalone_mode=False
        )
        made = rate(args.n, time.perf_counter() - t)
        rows.append((f"make-shapes --n {args.n} (sample+render+PNG)", {"images_per_s": made}))
        config = DatasetConfig(image_size=args.image_size)
        files = ImageTextDataset(Path(tmp) / "captions.json", tokenizer=vocab, config=config)
        for workers in (int(w) for w in args.workers.split(",")):
            name = f"PNG files, {workers} workers, batch {args.batch_size}"
            rows.append((name, loader_rate(files, args.batch_size, workers)))
        augmented = ImageTextDataset(
            Path(tmp) / "captions.json", tokenizer=vocab, config=config.model_copy(update={"augment": True})
        )
        rows.append(("PNG files + augment, 0 workers", loader_rate(augmented, args.batch_size, 0)))

    t = time.perf_counter()
    memory = ShapesDataset(args.n, seed=0, image_size=args.image_size, split="train", tokenizer=vocab)
    built = rate(args.n, time.perf_counter() - t)
    rows.append((f"ShapesDataset({args.n}) build (sample+render)", {"images_per_s": built}))
    rows.append((f"ShapesDataset, 0 workers, batch {args.batch_size}", loader_rate(memory, args.batch_size, 0)))
    rows.append((f"ShapesDataset, 2 workers, batch {args.batch_size}", loader_rate(memory, args.batch_size, 2)))

    print(f"{'pipeline':<52} {'images/s':>10} {'steady':>10}")
    for name, r in rows:
        print(f"{name:<52} {r['images_per_s']:>10} {r.get('steady_images_per_s', ''):>10}")
    if args.out:
        env = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }
        args.out.write_text(
            json.dumps(
                {
                    "env": env,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "results": [{"name": n, **r} for n, r in rows],
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
