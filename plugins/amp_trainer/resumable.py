"""The trainer's checkpoint methods: what is saved so that a resumed run continues bit for bit.

Saved: weights, tokenizer, optimizer/scheduler/GradScaler state, every process's RNG state, the step,
the epoch and the batch position in it, and the best metric. Restored data order: the trainer's
sampler depends only on (seed, epoch) and restarts at the saved batch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from . import run_state as ckpt

# optimizer.pt entries of a run with ema_decay: the weights the optimizer trains, and the average's update count
TRAINED_WEIGHTS, EMA_UPDATES = "trained_weights", "ema_updates"


class CheckpointMixin:
    """``save_checkpoint`` / ``load_checkpoint`` / ``resume`` of ``PixelLLMTrainer`` (which defines the attributes)."""

    def save_checkpoint(self, name: str | None = None) -> Path:
        """Write ``checkpoint_dir/<name>`` (default ``step-<global_step>``), point ``latest`` at it, copy it to
        ``best`` when it is the best so far, and rotate old step folders. Every process must call it."""
        name = name or ckpt.step_name(self.global_step)
        folder = self.checkpoint_dir / name
        rng_json = self.world.gather_objects(ckpt.rng_json())  # every process's RNG: dropout differs per rank
        rng_tensors = self.world.gather_objects(ckpt.rng_tensors())
        best = self._best_pending
        best_checkpoint = name if best else self.best_checkpoint
        self.world.barrier()
        if self.world.is_main:
            tensors = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_tensors,
            }
            if self.eval_model is not self.model:  # model.safetensors holds the average: the trained weights here
                tensors[TRAINED_WEIGHTS] = self.model.state_dict()
                tensors[EMA_UPDATES] = int(self.ema.n_averaged)
            ckpt.write_checkpoint(
                folder, self.eval_model, self.tokenizer, self._state(rng_json, best_checkpoint), tensors
            )
            ckpt.point_latest(self.checkpoint_dir, name, self.global_step)
            if best:
                ckpt.copy_as_best(self.checkpoint_dir, folder)
            keep = {name} | ({best_checkpoint} if best_checkpoint else set())
            ckpt.rotate(self.checkpoint_dir, self.config.save_total_limit, keep)
            self._plot()
        self.best_checkpoint, self._best_pending = best_checkpoint, False
        self._last_save_step = self.global_step
        self.world.barrier()
        return folder

    def _state(self, rng_json: list[dict[str, Any]], best_checkpoint: str | None) -> dict[str, Any]:
        sampler = self.sampler
        return {
            "format": ckpt.STATE_FORMAT,
            "version": 1,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "train_time_s": self.train_time_s,
            "best_metric": self.best_metric,
            "best_metric_name": self.best_measured_by,
            "best_val_loss": self.best_val_loss,
            "best_checkpoint": best_checkpoint,
            "world_size": self.world.world_size,
            "num_samples": sampler.num_samples if sampler is not None else None,
            "batch_size": sampler.batch_size if sampler is not None else None,
            "seed": self.config.seed,
            **self.early_stopping.state(),  # validations_since_best, early_stopped
            "trainer_config": self.config.model_dump(mode="json"),
            "rng": rng_json,
        }

    def load_checkpoint(self, path: str | Path) -> dict[str, Any] | None:
        """Restore a checkpoint folder: weights (after vocabulary/shape checks), and when it is a trainer
        checkpoint also optimizer, scheduler, scaler, RNG, counters and data position. Returns the state
        (None for a ``save_pretrained`` folder, whose weights then start a fresh run). A run's folder
        (``checkpoint_dir``) stands for its ``latest`` checkpoint."""
        folder = Path(path)
        if ckpt.is_run_folder(folder):
            folder = ckpt.read_latest(folder)
        tokenizer = ckpt.load_model(folder, self.model, self.tokenizer)
        if self.tokenizer is None:
            self.tokenizer = tokenizer
        state = ckpt.read_state(folder)
        if state is None:
            return None
        tensors = ckpt.read_tensors(folder)
        try:
            ckpt.check_hyperparameter_types(tensors)
            self.optimizer.load_state_dict(tensors["optimizer"])
            self.scheduler.load_state_dict(tensors["scheduler"])
            if tensors.get("scaler") and self.scaler.is_enabled():  # {}: saved by a run without fp16
                self.scaler.load_state_dict(tensors["scaler"])
            self._restore_average(tensors)
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise ckpt.CheckpointError(
                f"{folder / ckpt.OPTIMIZER}: does not fit this model/optimizer: {reason}"
            ) from None
        self._restore_counters(state, folder)
        self._apply_optimizer_settings()  # after the counters: a time-based schedule reads train_time_s
        rng_json, rng_tensors = state.get("rng") or [None], tensors.get("rng") or [None]
        rank = self.world.rank if len(rng_json) == self.world.world_size else 0
        try:
            ckpt.restore_rng(rng_json[min(rank, len(rng_json) - 1)], rng_tensors[min(rank, len(rng_tensors) - 1)])
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, RuntimeError) as exc:
            reason = " ".join(str(exc).split())[:200]
            raise ckpt.CheckpointError(
                f"{folder / ckpt.STATE}: invalid RNG state (or the 'rng' tensors of {ckpt.OPTIMIZER}): {reason}"
            ) from None
        if self.world.is_main:
            self.log.resume_at(self.global_step)
        return state

    def _restore_average(self, tensors: dict[str, Any]) -> None:
        """After ``model.safetensors`` went into the model: with ``ema_decay`` it is the average's starting
        point; a checkpoint of a run with ``ema_decay`` also holds the trained weights, which the model then
        continues from (also when this run has no ``ema_decay``)."""
        if self.ema is not None:
            self.ema.module.load_state_dict(self.model.state_dict())
            updates = tensors.get(EMA_UPDATES, 0) if TRAINED_WEIGHTS in tensors else 0
            if not isinstance(updates, int) or isinstance(updates, bool) or not 0 <= updates < 2**63:
                raise TypeError(f"{EMA_UPDATES} must be a non-negative integer, got {updates!r:.40}")
            self.ema.n_averaged.fill_(updates)  # 0: the next update starts the average from the trained weights
        if TRAINED_WEIGHTS in tensors:
            self.model.load_state_dict(tensors[TRAINED_WEIGHTS])

    def _apply_optimizer_settings(self) -> None:
        """The loaded optimizer and schedule carry the saved run's learning rate, betas and weight decay;
        this run's config wins (the same values unless changed, so an exact resume stays exact)."""
        cfg, scheduler = self.config, self.scheduler
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):  # a subclass's own schedule: leave it
            return
        # the groups' peak LRs and weight decays as this run's config builds them (group_settings)
        scheduler.base_lrs = [lr for lr, _ in self.group_settings]
        for i, (group, (lr, weight_decay)) in enumerate(zip(self.optimizer.param_groups, self.group_settings)):
            group["initial_lr"] = lr
            group["lr"] = lr * scheduler.lr_lambdas[i](scheduler.last_epoch)
            group["betas"] = (cfg.adam_beta1, cfg.adam_beta2)
            group["weight_decay"] = weight_decay
        scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]  # what get_last_lr() logs

    def _restore_counters(self, state: dict[str, Any], folder: Path) -> None:
        for key in (
            "global_step",
            "epoch",
            "batch_in_epoch",
            "train_time_s",
            "best_metric",
            "best_val_loss",
            "best_checkpoint",
        ):
            setattr(self, key, state.get(key, getattr(self, key)))
        saved_metric = state.get("best_metric_name")  # what the saved best value measures
        if saved_metric and not self.best_metric_name:
            self.best_metric_name = saved_metric
        # a different metric from now on resets the best at the next validation (see _validate_and_track)
        self.best_measured_by = saved_metric
        self.early_stopping.since_best = state.get("validations_since_best", 0)
        self._started = True
        self._last_save_step = self.global_step
        sampler = self.sampler
        same_order = (
            sampler is not None
            and state.get("num_samples") == sampler.num_samples
            and (state.get("batch_size") == sampler.batch_size and state.get("world_size") == self.world.world_size)
        )
        dataset = getattr(self.train_dataloader, "dataset", None)
        if sampler is None and hasattr(dataset, "set_epoch") and isinstance(dataset, torch.utils.data.IterableDataset):
            # a stream whose order is a function of the epoch (WebDataset shards): replayed from the epoch start
            same_order = state.get("world_size") == self.world.world_size
        if not same_order and self.batch_in_epoch:
            warnings.warn(
                f"{folder}: resuming mid-epoch with a different data order (dataset size, batch size or number of "
                "processes changed, or the loader has its own sampler); the rest of this epoch will not match "
                "the interrupted run",
                stacklevel=3,
            )

    def resume(self, path: str | Path = "latest") -> dict[str, Any] | None:
        """``load_checkpoint`` of ``"latest"`` (in checkpoint_dir), a checkpoint folder, or a checkpoint_dir."""
        return self.load_checkpoint(ckpt.resolve_checkpoint(path, self.checkpoint_dir))
