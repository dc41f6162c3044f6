"""``PixelLLMTrainer``: AdamW with warm-up and decay, mixed precision, gradient accumulation, exact resume,
validation with caption metrics, rotating atomic checkpoints, and DDP under ``torchrun``.

One optimizer step consumes ``gradient_accumulation_steps`` micro-batches on every process. The loss
is normalised by the number of target tokens in the whole step (all micro-batches, all processes),
so N processes with batch B compute the same update as one process with batch N*B, and accumulation
equals a larger batch. Steps are counted in optimizer steps; ``batch_in_epoch`` counts micro-batches.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from geometry_os.errors import TrainingError
from geometry_os.systems.pixel_llm.plugin_api import PixelLLMConfig, TrainerConfig, count_targets

from . import run_state as ckpt
from .distributed import init_world, wrap_ddp
from .ema import ema_model
from .feedback import CURVES_FILE, METRICS_FILE, TENSORBOARD_DIR, MetricsLog, Progress, plot_curves
from .finetune import EarlyStopping, parameter_counts, prepare_model
from .fit import check_images, estimate_line, fit_dataset, fitted_warmup
from .optim import amp_dtype, finetune_param_groups, lr_lambda, resolve_device
from .resumable import CheckpointMixin
from .sampling import adapt_loader, epoch_seed, make_dataloader
from .validation import evaluate, generation_unavailable, warn_if_collapsed

PLOT_INTERVAL_S = 30.0
ESTIMATE_AFTER_STEPS, ESTIMATE_AFTER_S = 5, 3.0  # the time estimate is printed once both have passed
SUGGEST_SMALL_ABOVE_S = 30 * 60  # a CPU run expected to take longer gets the --preset small hint


FP16_CALIBRATION_STEPS = 24  # GradScaler halvings from its initial 2**16 that still count as calibration


class NonFiniteLossError(TrainingError):
    """Too many consecutive steps had a NaN/inf loss or gradient."""


class PixelLLMTrainer(CheckpointMixin):
    """Trains a ``PixelLLM``. ``config``: a ``TrainerConfig`` or a ``PixelLLMConfig`` (its ``trainer``).

    Exact resume needs the data order to be the trainer's: loaders from ``make_dataloader`` (or plain
    ``shuffle=True/False`` loaders, which are rebuilt around the trainer's sampler) resume at the next
    batch; a loader with its own sampler is replayed from the epoch start instead.
    ``best_metric``: the validation metric that picks ``best`` (default: ``exact_match`` when captions
    can be generated, else ``val_loss``); names containing ``loss`` are minimised.
    """

    make_dataloader = staticmethod(make_dataloader)

    @staticmethod
    def run(**options: Any) -> dict[str, Any] | None:
        """Everything ``geo-os pixel-llm train`` does (config, data, model, training), from Python: the
        core's ``workflows.train`` with this plugin's ``--init-from`` importer. Options: see ``workflows.train``."""
        from geometry_os.systems.pixel_llm.plugin_api import workflows

        from .init_from import convert

        return workflows.train(**{"convert": convert, **options})

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainerConfig | PixelLLMConfig | None = None,
        train_dataloader: Any = None,
        val_dataloader: Any = None,
        tokenizer: Any = None,
        *,
        quiet: bool = False,
        best_metric: str | None = None,
    ) -> None:
        cfg = config.trainer if isinstance(config, PixelLLMConfig) else (config or TrainerConfig())
        if train_dataloader is None:
            raise TrainingError("PixelLLMTrainer needs a train_dataloader")
        self.config, self.quiet = cfg, quiet
        self.best_metric_name = best_metric or getattr(cfg, "best_metric", None)
        self.device = resolve_device(cfg.device)
        self.world = init_world(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.world.local_rank)
        self.model = model.to(self.device)
        prepare_model(self.model, cfg)  # LoRA adapters, frozen parameters, gradient checkpointing
        # the averaged weights, which validation, `best` and the saved model.safetensors use (None: off)
        self.ema = ema_model(self.model, cfg.ema_decay) if cfg.ema_decay else None
        model_config = getattr(model, "config", None)
        self.image_size = getattr(model_config, "image_size", None)
        self._notices = [
            notice
            for loader, label in ((train_dataloader, "training"), (val_dataloader, "validation"))
            if model_config is not None and loader is not None
            for notice in [fit_dataset(loader, model_config, label)]
            if notice
        ]
        dataset_tokenizer = getattr(getattr(train_dataloader, "dataset", None), "tokenizer", None)
        self.tokenizer = tokenizer if tokenizer is not None else dataset_tokenizer
        self.train_dataloader, self.sampler = adapt_loader(train_dataloader, cfg.seed, self.world)
        self.val_dataloader = val_dataloader
        if val_dataloader is not None and self.world.enabled:
            self.val_dataloader, _ = adapt_loader(val_dataloader, cfg.seed, self.world, training=False)
        self.amp_dtype = amp_dtype(cfg, self.device)
        self.optimizer = torch.optim.AdamW(  # fused: one kernel for all parameters (CPU and CUDA)
            finetune_param_groups(self.model, cfg),
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            fused=self.device.type in ("cpu", "cuda"),
        )
        # each group's peak LR and weight decay under this config: a resume applies them to the loaded groups
        self.group_settings = [(g["lr"], g["weight_decay"]) for g in self.optimizer.param_groups]
        self.steps_per_epoch = self._steps_per_epoch()
        self.total_steps = cfg.max_steps or cfg.num_epochs * self.steps_per_epoch
        self.train_time_s = 0.0  # read by a schedule that decays over max_time_s
        warmup, why = fitted_warmup(cfg.warmup_steps, self.total_steps)
        if why:
            warnings.warn(why, RuntimeWarning, stacklevel=2)
        schedule_config = cfg.model_copy(update={"warmup_steps": warmup}) if why else cfg
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(schedule_config, self.total_steps, elapsed_s=lambda: self.train_time_s)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.train_model = wrap_ddp(self.model, self.world, self.device)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.checkpoint_dir = Path(cfg.checkpoint_dir)
        self.log = MetricsLog(
            self.checkpoint_dir / METRICS_FILE,
            enabled=self.world.is_main,
            tensorboard_dir=self.checkpoint_dir / TENSORBOARD_DIR if cfg.tensorboard else None,
        )
        self.early_stopping = EarlyStopping(cfg.early_stopping_patience)
        # progress: counters saved in trainer_state.json
        self.global_step = self.epoch = self.batch_in_epoch = 0
        self.train_time_s = 0.0
        self.best_metric: float | None = None
        self.best_measured_by: str | None = None  # the metric best_metric is a value of
        self.best_val_loss: float | None = None  # breaks ties of best_metric
        self.best_checkpoint: str | None = None
        self.nonfinite_streak = 0
        self.overflow_streak = 0  # fp16 steps the GradScaler skipped in a row
        self._started = False
        self._best_pending = False
        self._time_up = False
        self._last_plot = -math.inf
        self._last_val_step = self._last_save_step = -1
        self._session_start: float | None = None  # perf_counter() at train_time_s == 0
        self._progress: Progress | None = None
        self._log_mark = (time.perf_counter(), 0)  # time, images since the last log line
        self._estimate_mark: tuple[float, int, int] | None = None  # time, step, images when timing began

    # ---- setup -------------------------------------------------------------------------------------------

    def _steps_per_epoch(self) -> int:
        if self.sampler is not None:
            batches = self.sampler.num_batches
        else:
            try:
                batches = len(self.train_dataloader)
            except TypeError:
                if self.config.max_steps is None:
                    raise TrainingError("the training data has no length: set trainer.max_steps") from None
                return 1
        if batches < 1:
            raise TrainingError(
                "the training DataLoader yields no batches (dataset smaller than batch_size with drop_last?)"
            )
        return math.ceil(batches / self.config.gradient_accumulation_steps)

    def _seed(self) -> None:
        seed = self.config.seed + self.world.rank  # distinct dropout masks per process
        random.seed(seed)
        torch.manual_seed(seed)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.image_size is not None and torch.is_tensor(batch.get("images")):
            check_images(batch["images"], self.image_size)
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ---- training loop -----------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Train until ``max_steps``, ``num_epochs`` or ``max_time_s``; returns a summary."""
        cfg = self.config
        refusal = None if self._started else ckpt.new_run_refusal(self.checkpoint_dir)
        if refusal:
            raise TrainingError(refusal)
        if self.world.is_main:
            ckpt.remove_stale(self.checkpoint_dir)
            if self.best_checkpoint:  # a crash while replacing best can leave the previous one there
                ckpt.repair_best(self.checkpoint_dir, self.best_checkpoint)
        self._time_up = cfg.max_time_s is not None and self.train_time_s >= cfg.max_time_s
        self._session_start = time.perf_counter() - self.train_time_s
        self._log_mark = (time.perf_counter(), 0)
        # A time budget without max_steps ends the run long before the epochs' step count: no total then.
        self._shown_total = None if cfg.max_time_s is not None and cfg.max_steps is None else self.total_steps
        self._progress = Progress(self._shown_total, self.global_step, self.world.is_main, self.quiet)
        trainable, total = parameter_counts(self.model)
        self._progress.line(
            f"parameters: {trainable:,} trainable / {total:,} total ({100 * trainable / total:.1f}%)", always=True
        )
        for notice in self._notices:
            self._progress.line(notice, always=True)
        self._estimate_mark = None
        self._progress.line(precision_line(cfg, self.amp_dtype, self.device), always=True)
        try:
            while not self._finished():
                self.train_epoch()
            improved = False
            if self.val_dataloader is not None and self._last_val_step != self.global_step:
                improved = self._validate_and_track()
            if improved or self._last_save_step != self.global_step:
                self.save_checkpoint()
            self.train_time_s = time.perf_counter() - self._session_start
        finally:
            self._progress.close()
            self._progress = None
            self.log.close()
        self._plot(force=True)
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "train_time_s": self.train_time_s,
            "best_metric": self.best_metric,
            "best_checkpoint": self.best_checkpoint,
            "checkpoint_dir": str(self.checkpoint_dir),
            "stopped_by_time": self._time_up,
            "stopped_early": self.early_stopping.stop,
        }

    def _finished(self) -> bool:
        cfg = self.config
        if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
            return True
        if self._time_up or self.early_stopping.stop:
            return True
        return cfg.max_steps is None and self.epoch >= cfg.num_epochs

    def train_epoch(self) -> dict[str, float]:
        """Train the rest of the current epoch (or until a stop condition); returns its mean loss."""
        if not self._started:
            self._seed()
            self._started = True
        if self._session_start is None:  # called directly rather than from train()
            self._session_start = time.perf_counter() - self.train_time_s
        accumulation = self.config.gradient_accumulation_steps
        batches = self._epoch_batches()
        losses: list[float] = []
        while not self._finished():
            window = list(itertools.islice(batches, accumulation))
            if not window:  # the data ran out: the epoch is over
                if not self.batch_in_epoch:
                    raise TrainingError(f"epoch {self.epoch}: the training DataLoader yielded no batches")
                self._end_epoch()
                self._after_step(epoch_end=True)
                break
            loss = self._optimizer_step(window)
            self.batch_in_epoch += len(window)
            if loss is None:  # skipped (non-finite)
                continue
            losses.append(loss)
            epoch_end = self.sampler is not None and self.batch_in_epoch >= self.sampler.num_batches
            if epoch_end:
                self._end_epoch()
            self._after_step(epoch_end)
            if epoch_end:
                break
        return {"loss": sum(losses) / len(losses) if losses else float("nan"), "steps": len(losses)}

    def _epoch_batches(self) -> Iterator[dict[str, Any]]:
        """This epoch's batches from ``batch_in_epoch`` on; the trainer's sampler skips without loading."""
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
            if getattr(self.train_dataloader, "generator", None) is not None:
                self.train_dataloader.generator.manual_seed(epoch_seed(self.config.seed, self.epoch))
            return iter(self.train_dataloader)
        sampler = getattr(self.train_dataloader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        dataset = getattr(self.train_dataloader, "dataset", None)
        if isinstance(dataset, torch.utils.data.IterableDataset) and hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.epoch)  # a stream whose order is a function of the epoch (WebDataset shards)
        return itertools.islice(iter(self.train_dataloader), self.batch_in_epoch, None)

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0

    @property
    def _regularisers(self) -> dict[str, float]:
        """``image_dropout`` / ``word_dropout`` / ``word_replacement`` for the model's forward, only when
        set (a model without them still trains)."""
        cfg = self.config
        names = ("image_dropout", "word_dropout", "word_replacement")
        return {name: getattr(cfg, name) for name in names if getattr(cfg, name)}

    def _optimizer_step(self, window: list[dict[str, Any]]) -> float | None:
        """Forward/backward every micro-batch of one step, then clip and step; None when skipped."""
        cfg, world = self.config, self.world
        # target tokens of the whole step, counted on the CPU batches (no device sync)
        total = float(sum(count_targets(b["labels"], b.get("attention_mask")) for b in window))
        if world.enabled:
            total = world.all_reduce_sum(torch.tensor(total, device=self.device)).item()
        self.train_model.train()
        loss_sum = torch.zeros((), device=self.device)
        images = 0
        for i, batch in enumerate(window):
            batch = self._to_device(batch)
            images += batch["images"].shape[0]
            last = i == len(window) - 1
            sync = contextlib.nullcontext() if last or not world.enabled else self.train_model.no_sync()
            with sync:
                with self._autocast():
                    out = self.train_model(
                        batch["images"],
                        batch["input_ids"],
                        batch.get("attention_mask"),
                        batch["labels"],
                        label_smoothing=cfg.label_smoothing,
                        reduction="sum",
                        **self._regularisers,
                    )
                local = out.loss.float()  # summed over this micro-batch's target tokens
                # DDP averages gradients over processes: * world_size makes the update sum / step's tokens
                self.scaler.scale(local * world.world_size / max(total, 1.0)).backward()
            loss_sum += local.detach()
        elapsed = time.perf_counter() - self._session_start
        over_time = cfg.max_time_s is not None and elapsed >= cfg.max_time_s
        flags = torch.stack(
            [
                loss_sum,
                (~torch.isfinite(loss_sum)).float(),
                torch.tensor(float(over_time), device=self.device),
                torch.tensor(elapsed, device=self.device),
            ]
        )
        global_loss, nonfinite, out_of_time, elapsed_sum = world.all_reduce_sum(flags).tolist()
        # one clock for all processes, so that a time-based LR schedule gives every replica the same LR
        self.train_time_s = elapsed_sum / world.world_size if world.enabled else elapsed
        self._time_up = out_of_time > 0  # any process out of time stops all of them together
        if nonfinite > 0:
            return self._skip_step(f"non-finite loss ({global_loss})")
        lr = self.scheduler.get_last_lr()[0]
        self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if cfg.max_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm).item()
            if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
                return self._skip_step(f"non-finite gradient norm ({grad_norm})")
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if scale is not None and self.scaler.get_scale() < scale:  # fp16 overflow: the scaler skipped the step
            return self._overflowed()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.scheduler.step()
        self.nonfinite_streak = self.overflow_streak = 0
        self.global_step += 1
        loss = global_loss / max(total, 1.0)
        self._log_step(loss, lr, grad_norm, images * world.world_size)
        return loss

    def _overflowed(self) -> None:
        """An fp16 step the GradScaler skipped. A few in a row are its calibration (the scale halves each
        time, from 2**16); many more mean gradients that are not finite at any scale, which must stop the run
        rather than loop on skipped steps."""
        self.overflow_streak += 1
        if self.world.is_main:
            self.log.write({"step": self.global_step, "event": "fp16_overflow", "scale": self.scaler.get_scale()})
        limit = FP16_CALIBRATION_STEPS + self.config.max_nonfinite_steps
        if self.overflow_streak >= limit:
            raise NonFiniteLossError(
                f"{limit} consecutive fp16 steps had non-finite gradients (GradScaler scale down to "
                f"{self.scaler.get_scale():g}); lower trainer.learning_rate, use amp_dtype='bfloat16' or use_amp=false"
            )
        return None

    def _skip_step(self, why: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_streak += 1
        limit = self.config.max_nonfinite_steps
        message = f"step {self.global_step + 1}: {why}; step skipped ({self.nonfinite_streak}/{limit} in a row)"
        if self.world.is_main:
            self.log.write({"step": self.global_step, "event": "nonfinite", "reason": why})
        if self.nonfinite_streak >= limit:
            raise NonFiniteLossError(
                f"{limit} consecutive steps had a non-finite loss or gradient ({why}); lower trainer.learning_rate, "
                "check the data, or set trainer.use_amp=false"
            )
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return None

    def _log_step(self, loss: float, lr: float, grad_norm: float | None, images: int) -> None:
        now = time.perf_counter()
        mark_time, mark_images = self._log_mark
        images_total = mark_images + images
        rate = images_total / max(now - mark_time, 1e-9)
        if self._progress is not None:
            self._progress.step({"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "img/s": f"{rate:.0f}"})
            self._estimate(now, images)
        if self.global_step % self.config.log_interval and self.global_step != self.total_steps:
            self._log_mark = (mark_time, images_total)
            return
        self._log_mark = (now, 0)
        record = {
            "step": self.global_step,
            "epoch": self.epoch,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "images_per_s": rate,
            "train_time_s": self.train_time_s,
        }
        self.log.write(record)
        if self._progress is not None:
            budget, total = self.config.max_time_s, self._shown_total
            where = f"{self.global_step}" + (f"/{total}" if total is not None else "")
            if budget is not None:
                where += f" ({self.train_time_s:.0f}/{budget:.0f} s)"
            self._progress.line(f"step {where}  loss {loss:.4f}  lr {lr:.2e}  {rate:.0f} img/s")

    def _estimate(self, now: float, images: int) -> None:
        """Once per session, after the first steps: the expected time per epoch and for the rest of the run
        (the first step is not timed: it pays for warming up kernels and caches)."""
        mark = self._estimate_mark
        if self._progress is None or self._progress.quiet:
            return
        if mark is None:
            self._estimate_mark = (now, self.global_step, 0)
            return
        start, first_step, counted = mark
        if counted < 0:  # already printed
            return
        counted += images
        steps, elapsed = self.global_step - first_step, now - start
        if steps < ESTIMATE_AFTER_STEPS or elapsed < ESTIMATE_AFTER_S:
            self._estimate_mark = (start, first_step, counted)
            return
        self._estimate_mark = (start, first_step, -1)
        per_step = elapsed / steps
        remaining = None if self._shown_total is None else max(0, self._shown_total - self.global_step)
        budget = self.config.max_time_s
        budget_left = None if budget is None else max(0.0, budget - self.train_time_s)
        line = estimate_line(per_step, self.steps_per_epoch, remaining, budget_left, counted / elapsed)
        self._progress.line(line, always=True)
        run_s = min(
            math.inf if remaining is None else per_step * remaining, math.inf if budget_left is None else budget_left
        )
        if self.device.type == "cpu" and run_s > SUGGEST_SMALL_ABOVE_S and self._larger_than_small():
            self._progress.line(
                "training on the CPU: the `small` preset trains many times faster "
                "(geo-os pixel-llm train --preset small)",
                always=True,
            )

    def _larger_than_small(self) -> bool:
        """Whether the model has more parameters than the ``small`` preset with its vocabulary."""
        from geometry_os.systems.pixel_llm.plugin_api import PixelLLM, preset_config

        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
        if vocab is None:
            return False
        with torch.device("meta"):
            small = PixelLLM(preset_config("small", vocab_size=vocab))
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        return count(self.model) > count(small)

    def _after_step(self, epoch_end: bool) -> None:
        """Validate and save on their step intervals, or at the end of an epoch when no interval is set."""
        cfg, step = self.config, self.global_step
        validate = (
            self.val_dataloader is not None
            and self._last_val_step != step
            and (
                (cfg.val_interval is not None and step % cfg.val_interval == 0)
                or (epoch_end and cfg.val_interval is None)
            )
        )
        save = (cfg.checkpoint_interval is not None and step % cfg.checkpoint_interval == 0) or (
            epoch_end and cfg.checkpoint_interval is None
        )
        started = time.perf_counter()
        improved = self._validate_and_track() if validate else False
        if improved or (save and self._last_save_step != step):
            self.save_checkpoint()
        mark_time, mark_images = self._log_mark  # images/s counts training time only
        self._log_mark = (mark_time + time.perf_counter() - started, mark_images)

    def _plot(self, force: bool = False) -> None:
        """Redraw curves.png at most every PLOT_INTERVAL_S seconds (drawing costs a few hundred ms)."""
        now = time.perf_counter()
        if self.world.is_main and (force or now - self._last_plot >= PLOT_INTERVAL_S):
            plot_curves(self.log.history, self.checkpoint_dir / CURVES_FILE)
            self._last_plot = now

    # ---- validation --------------------------------------------------------------------------------------

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validation measures and checkpoints save: the moving average when ``ema_decay`` is set
        (once it has averaged a step), else the trained model."""
        if self.ema is None or int(self.ema.n_averaged) == 0:
            return self.model
        return self.ema.module

    def validate(self) -> dict[str, float]:
        """Validation loss and, when a tokenizer and the greedy decoder are available, caption metrics."""
        if self.val_dataloader is None:
            return {}
        return evaluate(
            self.eval_model,
            self.val_dataloader,
            to_device=self._to_device,
            autocast=self._autocast,
            world=self.world,
            tokenizer=self.tokenizer,
            max_samples=self.config.val_max_samples,
        )

    def _metric_name(self, metrics: dict[str, Any]) -> str:
        if self.best_metric_name:
            if self.best_metric_name not in metrics:  # a typo must not end a long run before its next save
                warnings.warn(
                    f"best metric {self.best_metric_name!r} is not computed (have: {', '.join(metrics)}); "
                    "'best' is picked by val_loss instead",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return "val_loss"
            return self.best_metric_name
        return "exact_match" if "exact_match" in metrics else "val_loss"

    def _validate_and_track(self) -> bool:
        """Validate, log, remember whether this step is the best so far, and count it for early stopping."""
        improved = self._validate_and_rank()
        if self.early_stopping.update(improved) and self.world.is_main:
            patience = self.early_stopping.patience
            self.log.write({"step": self.global_step, "event": "early_stop", "validations_since_best": patience})
            if self._progress is not None:
                self._progress.line(
                    f"early stopping at step {self.global_step}: no better {self.best_measured_by} in "
                    f"{patience} validations (best: {self.best_checkpoint or 'this run'})",
                    always=True,
                )
        return improved

    def _validate_and_rank(self) -> bool:
        """Validate, log, and remember whether this step is the best so far."""
        metrics = self.validate()
        self._last_val_step = self.global_step
        if self.world.is_main:
            self.log.write({"step": self.global_step, "epoch": self.epoch, **metrics})
            warn_if_collapsed(metrics)
            if self._progress is not None:
                shown = {k: metrics[k] for k in ("val_loss", "exact_match", "bleu_4", "distinct_1") if k in metrics}
                text = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
                self._progress.line(f"validation at step {self.global_step}: {text}", always=True)
        name = self._metric_name(metrics)
        value = metrics[name]
        if name != self.best_measured_by:  # values of another metric (config changed on resume) do not compare
            self.best_metric = self.best_val_loss = None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        # Lower is better for losses; ties (exact match stuck at 0 early on) go to the lower validation loss.
        sign = -1.0 if "loss" in name else 1.0
        candidate = (sign * value, -metrics.get("val_loss", math.inf))
        best_loss = math.inf if self.best_val_loss is None else self.best_val_loss
        if self.best_metric is None or candidate > (sign * self.best_metric, -best_loss):
            self.best_metric, self.best_measured_by, self._best_pending = float(value), name, True
            self.best_val_loss = metrics.get("val_loss")
            return True
        return False

    @property
    def generation_available(self) -> bool:
        return generation_unavailable(self.tokenizer) is None


def precision_line(cfg: TrainerConfig, dtype: torch.dtype | None, device: torch.device) -> str:
    """What the run computes in and why: the trainer prints it once at the start."""
    if dtype is not None:
        native = "this CPU computes bf16 natively" if device.type == "cpu" else f"on {device.type}"
        why = "" if cfg.amp_dtype != "auto" else f" (amp_dtype auto: {native})"
        return f"precision: {str(dtype).removeprefix('torch.')} autocast{why}"
    if not cfg.use_amp:
        return "precision: float32 (use_amp off)"
    return "precision: float32 (amp_dtype auto: this CPU has no native bf16; amp_dtype='bfloat16' forces it)"
