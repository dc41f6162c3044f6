"""Dynamic batching: one model worker thread gathers queued caption jobs for up to ``max_wait_ms``
(or until ``max_batch_size`` images wait), decodes them together and hands each job its own results.

Jobs are decoded together only when their ``GenerationConfig`` is identical and its strategy is one
whose batched captions equal its one-image-at-a-time captions (greedy and beam search; pinned by
``tests/test_decoding.py::test_batched_equals_one_at_a_time``). Any other job (sampling, whose random
stream depends on the batch, or a third-party strategy) is decoded on its own, in chunks of
``max_batch_size`` images exactly as ``geo-os pixel-llm caption`` chunks with ``--batch-size``.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import io
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import torch

from geometry_os.errors import GeometryOSError
from geometry_os.systems.pixel_llm.plugin_api import GenerationConfig

from .metrics import Metrics

logger = logging.getLogger(__name__)
BATCHABLE = frozenset({"greedy", "beam"})


class QueueFull(GeometryOSError):
    """More images are waiting than ``max_queue`` allows."""


@dataclass
class Job:
    """One caption request: its preprocessed images (n, 3, H, W) and options; ``future`` gets a list of
    per-image result dicts (or an exception). ``uploads`` are kept only when ``explain`` is asked."""

    pixels: torch.Tensor
    generation: GenerationConfig
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    return_token_ids: bool = False
    explain: list[BinaryIO] | None = None
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        """Number of images in the job."""
        return int(self.pixels.shape[0])

    @property
    def batch_key(self) -> str | None:
        """Jobs with the same key may share a model call; None: this job is decoded alone."""
        if self.explain or self.generation.strategy_name not in BATCHABLE or self.generation.do_sample:
            return None
        return self.generation.model_dump_json()

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        """Settle the job's future with ``result`` (or ``error``) from the worker thread, unless it is done."""

        def settle() -> None:
            if self.future.done():  # timed out or the client went away
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the event loop has closed: nobody waits for this job any more
            pass


class Batcher:
    """Owns the model: every decode runs on its one worker thread, so requests never race on it."""

    def __init__(
        self, model: Any, tokenizer: Any, metrics: Metrics, max_batch_size: int, max_wait_ms: float, max_queue: int
    ) -> None:
        self.model, self.tokenizer, self.metrics = model, tokenizer, metrics
        self.max_batch_size, self.max_wait, self.max_queue = max_batch_size, max_wait_ms / 1000, max_queue
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        # the worker decodes in its creator's context: the host active there (``Host.active``) resolves its strategies
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), name="pixel-llm-model", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; ``QueueFull`` when its images would exceed ``max_queue``."""
        with self._lock:
            if self.metrics.queued_images + job.size > self.max_queue:
                raise QueueFull(
                    f"the queue is full ({self.metrics.queued_images} images waiting, --max-queue "
                    f"{self.max_queue}); retry later"
                )
            self.metrics.queued_images += job.size
        self._queue.put(job)

    def close(self) -> None:
        """Stop the worker thread after the queued jobs (waits up to 60 s)."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    # ---- the worker --------------------------------------------------------------------------------

    def _take(self, job: Job) -> Job:
        with self._lock:
            self.metrics.queued_images -= job.size
        return job

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """``first`` plus what arrives within ``max_wait`` (up to ``max_batch_size`` images); and
        whether the stop marker was seen."""
        jobs, images = [self._take(first)], first.size
        deadline = time.perf_counter() + self.max_wait
        while images < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(self._take(job))
            images += job.size
        return jobs, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            jobs, stop = self._gather(first)
            jobs = [j for j in jobs if not j.future.done()]  # timed out while waiting: skip the work
            groups: dict[str, list[Job]] = {}
            for job in jobs:
                key = job.batch_key
                if key is None:
                    self._guarded([job], self._decode_alone)
                else:
                    groups.setdefault(key, []).append(job)
            for group in groups.values():
                self._guarded(group, self._decode_together)

    def _guarded(self, jobs: list[Job], decode: Any) -> None:
        try:
            decode(jobs)
        except Exception as exc:  # never let one bad batch end the worker
            if not isinstance(exc, GeometryOSError):
                logger.exception("decoding failed")
            for job in jobs:
                job.resolve(error=exc)

    def _decode_together(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        pixels = torch.cat([job.pixels for job in jobs])
        rows = self._decode(pixels, jobs[0], len(jobs))
        offset = 0
        for job in jobs:
            timings = _timings(job, started, len(jobs), int(pixels.shape[0]))
            job.resolve({"results": rows[offset : offset + job.size], "timings": timings})
            offset += job.size

    def _decode_alone(self, jobs: list[Job]) -> None:
        (job,) = jobs
        started = time.perf_counter()
        rows = self._decode(job.pixels, job, 1)
        if job.explain:
            for row, upload in zip(rows, job.explain):
                row["attention_png"] = self._explain(upload, job.generation)
        job.resolve({"results": rows, "timings": _timings(job, started, 1, job.size)})

    def _decode(self, pixels: torch.Tensor, job: Job, requests: int) -> list[dict[str, Any]]:
        """Per-image result dicts, in order, decoding ``max_batch_size`` images per model call."""
        from geometry_os.systems.pixel_llm.plugin_api import generate_caption

        generation = job.generation.model_copy(update={"return_dict_in_generate": True})
        per_image = generation.num_return_sequences
        rows: list[dict[str, Any]] = []
        for start in range(0, int(pixels.shape[0]), self.max_batch_size):
            chunk = pixels[start : start + self.max_batch_size]
            out = generate_caption(self.model, chunk.to(self.model.device), config=generation, tokenizer=self.tokenizer)
            self.metrics.batch_done(int(chunk.shape[0]), requests)
            for i in range(int(chunk.shape[0])):
                sequences = [self._sequence(out, i * per_image + k, job, generation) for k in range(per_image)]
                row = dict(sequences[0])  # the best sequence, as `caption` reports it
                if per_image > 1:
                    row["sequences"] = sequences
                rows.append(row)
        return rows

    def _sequence(self, out: Any, j: int, job: Job, generation: GenerationConfig) -> dict[str, Any]:
        row: dict[str, Any] = {
            "caption": out.texts[j],
            "score": float(out.sequence_scores[j]),
            "penalised_score": float(out.scores_penalised[j]),
        }
        if out.rerank_scores is not None:
            row["rerank_score"] = float(out.rerank_scores[j])
        ids = out.sequences[j].tolist()
        eos = generation.eos_token_id  # the request's, else the tokenizer's own (as generate_caption picks it)
        if "eos_token_id" not in generation.model_fields_set:
            own = getattr(self.tokenizer, "eos_token_id", None)
            eos = eos if own is None else own
        length = ids.index(eos, 1) + 1 if eos in ids[1:] else len(ids)  # <bos> ... <eos>, no padding
        if job.return_token_ids:
            row["token_ids"] = ids[:length]
        if generation.output_scores and out.token_scores is not None:
            row["token_scores"] = [float(s) for s in out.token_scores[j][: length - 1]]
        return row

    def _explain(self, upload: BinaryIO, generation: GenerationConfig) -> str:
        from geometry_os.systems.pixel_llm.plugin_api import draw_panels, explain_image

        picture = draw_panels(explain_image(self.model, self.tokenizer, upload, generation))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")


def _timings(job: Job, started: float, requests: int, images: int) -> dict[str, Any]:
    now = time.perf_counter()
    return {
        "queue_ms": round((started - job.enqueued) * 1000, 3),
        "decode_ms": round((now - started) * 1000, 3),
        "batch_requests": requests,
        "batch_images": images,
    }
