"""``read_ahead``: the caption paths read the next batch of files while the model captions this one."""

from __future__ import annotations

import threading

import pytest

from geometry_os.systems.pixel_llm.captioning import read_ahead

WAIT_S = 10  # generous: a failure shows as a wait this long, never as a flaky pass


def test_batches_come_back_in_order_with_every_item_loaded():
    batches = [[1, 2, 3], [4], [5, 6]]
    out = list(read_ahead(batches, lambda x: x * 10, threads=3))
    assert out == [([1, 2, 3], [10, 20, 30]), ([4], [40]), ([5, 6], [50, 60])]
    assert list(read_ahead([], lambda x: x)) == []


def test_the_next_batch_loads_while_the_caller_works_on_this_one():
    second_batch_loaded = threading.Event()

    def load(x: int) -> int:
        if x == 3:
            second_batch_loaded.set()
        return x

    batches = read_ahead([[1, 2], [3], [4]], load, threads=1)
    batch, _ = next(batches)
    assert batch == [1, 2]
    # the caller has not asked for batch 2 yet, and still it is loaded while the caller holds batch 1
    assert second_batch_loaded.wait(WAIT_S)
    assert [b for b, _ in batches] == [[3], [4]]


def test_never_more_than_the_next_batch_is_loaded_ahead():
    loaded: list[int] = []
    seen = threading.Event()

    def load(x: int) -> int:
        loaded.append(x)
        if x == 2:
            seen.set()
        return x

    batches = read_ahead([[1], [2], [3], [4]], load, threads=4)
    next(batches)
    assert seen.wait(WAIT_S)
    assert sorted(loaded) == [1, 2]  # batch 3 waits until batch 2 is handed out
    next(batches)
    batches.close()
    assert 4 not in loaded  # a caller that stops early loads nothing more


def test_a_load_error_is_raised_when_its_batch_is_reached():
    def load(x: int) -> int:
        if x == 3:
            raise ValueError("bad item 3")
        return x

    batches = read_ahead([[1, 2], [3], [4]], load, threads=2)
    assert next(batches) == ([1, 2], [1, 2])  # the error in the batch being read ahead waits its turn
    with pytest.raises(ValueError, match="bad item 3"):
        next(batches)


def test_no_threads_loads_each_batch_in_the_callers_thread_when_reached():
    loaded: list[tuple[int, str]] = []

    def load(x: int) -> int:
        loaded.append((x, threading.current_thread().name))
        return x

    batches = read_ahead([[1], [2]], load, threads=0)
    assert next(batches) == ([1], [1]) and loaded == [(1, threading.current_thread().name)]
    assert next(batches) == ([2], [2]) and len(loaded) == 2


def test_loader_threads_are_the_cpus_torch_leaves_idle(monkeypatch):
    import torch

    from geometry_os.systems.pixel_llm import captioning

    monkeypatch.setattr(captioning, "usable_cpus", lambda: 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert captioning.loader_threads("cpu") == 8  # at most 8
    monkeypatch.setattr(torch, "get_num_threads", lambda: 12)
    assert captioning.loader_threads("cpu") == 4
    assert captioning.loader_threads("cuda") == 8  # a GPU leaves the CPUs to the reading
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert captioning.loader_threads("cpu") == 0  # every core computes: read when needed


def test_caption_paths_give_the_same_results_read_ahead_or_not(tmp_path):
    import torch
    from PIL import Image

    from geometry_os.systems.pixel_llm import caption_images as caption_api
    from geometry_os.systems.pixel_llm import create_pixel_llm
    from geometry_os.systems.pixel_llm.captioning import caption_images
    from geometry_os.systems.pixel_llm.resolution import get_component

    vocab = get_component("tokenizer", "simple").load().train(["a red circle", "a blue square left of a cat"], None)
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=len(vocab), preset="tiny").eval()
    paths = []
    for i in range(7):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 30), (30 * i, 200 - 20 * i, 90)).save(paths[-1])
    (tmp_path / "3.png").write_bytes(b"not a png")  # an unreadable file in the second batch
    runs = [[r.to_dict() for r in caption_images(model, vocab, paths, batch_size=3, threads=n)] for n in (0, 1, 3)]
    assert runs[0] == runs[1] == runs[2]
    assert [bool(r.get("error")) for r in runs[0]] == [i == 3 for i in range(7)]
    readable = [p for p in paths if p.name != "3.png"]
    api = caption_api(readable, model=model, tokenizer=vocab, batch_size=3)
    assert [r["caption"] for r in api] == [r["caption"] for r in runs[0] if not r.get("error")]


def test_one_pil_image_given_many_times_is_captioned_with_reading_ahead(monkeypatch, tmp_path):
    """A lazily opened PIL image is not thread-safe: only files are read on the loader threads."""
    import torch
    from PIL import Image

    from geometry_os.systems.pixel_llm import caption_images as caption_api
    from geometry_os.systems.pixel_llm import captioning, create_pixel_llm, pipeline
    from geometry_os.systems.pixel_llm.resolution import get_component

    vocab = get_component("tokenizer", "simple").load().train(["a red circle"], None)
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=len(vocab), preset="tiny").eval()
    Image.new("RGB", (640, 480), (200, 30, 30)).save(tmp_path / "big.jpg")
    shared = Image.open(tmp_path / "big.jpg")  # not loaded yet
    monkeypatch.setattr(pipeline, "loader_threads", lambda device: 8)
    results = caption_api([shared] * 12 + [tmp_path / "big.jpg"], model=model, tokenizer=vocab, batch_size=4)
    assert len(results) == 13 and len({r["caption"] for r in results[:12]}) == 1
    assert captioning.usable_cpus() >= 1


def test_loader_threads_count_the_cpus_this_process_may_use(monkeypatch):
    import torch

    from geometry_os.systems.pixel_llm import captioning

    monkeypatch.setattr(captioning.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(captioning.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert captioning.usable_cpus() == 1 and captioning.loader_threads("cpu") == 0  # pinned to one CPU
