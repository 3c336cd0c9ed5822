"""The training loop (`Trainer`, `train`): steps with gradient accumulation, the non-finite and stop-signal
policies, logging, evaluation, checkpoints and keeping the best model. It follows DETR's `train_one_epoch` and
evaluation, written for Accelerate (several processes, mixed precision, exact resume)."""

import functools
import json
import logging
import math
import signal
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object, set_seed
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..configuration_detr_lite import DeTRLiteConfig
from ..data import BadImageReport, DetectionCollator, SeededAugmentation, SkipBadImages, train_transforms
from ..evaluation import format_metrics_table
from ..image_processing_detr_lite import DeTRLiteImageProcessor
from ..inference import predict_dataset, score_predictions
from ..loss_detr_lite import NonFinitePredictionError
from ..modeling_detr_lite import DeTRLiteForObjectDetection
from .arguments import TrainingArguments
from .checkpointing import check_disk_space, list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint
from .components import build_model, load_splits, make_accelerator, prepare_output_dir, training_images
from .optimization import apply_schedule, build_ema, build_scheduler, parameter_groups
from .policies import (StopSignal, TrainingError, TrainingInterrupted, ignore_stop_signals, is_due, is_new_best,
                       nonfinite_streak)
from .saving import push_to_hub, save_model, save_sample_prediction
from .state import TrainingState
from .time_budget import TimeBudget

logger = logging.getLogger(__name__)
# The final layer's loss terms, logged next to the total (the auxiliary layers' `_{i}` terms are not).
LOGGED_TERMS = ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error")


def train(args: TrainingArguments, config: DeTRLiteConfig | None = None) -> dict:
    """Train a detector, evaluate it, keep the best model in `{output_dir}/best`; see `Trainer`.

    Args:
        args: the run's settings (data, output folder, recipe).
        config: the architecture; its labels are replaced by the dataset's. None: DETR-R50's defaults, or the
            model of `args.model_name_or_path`.

    Returns:
        The last evaluation's metrics (`AP`, `AP50`, ..., `per_class_AP`).

    Raises:
        TrainingError: a run that cannot start or go on (the message says what to do); `TrainingInterrupted`
            after SIGINT/SIGTERM, once the checkpoint is written.
    """
    return Trainer(args, config).train()


class Trainer:
    """One training run: built from its arguments, then `train()`."""

    def __init__(self, args: TrainingArguments, config: DeTRLiteConfig | None = None) -> None:
        self.args, self.output_dir = args, Path(args.output_dir)
        self.accelerator = make_accelerator(args)
        if self.accelerator.is_main_process:
            prepare_output_dir(self.output_dir)
        set_seed(args.seed)
        Image.MAX_IMAGE_PIXELS = args.max_image_pixels or None  # DataLoader workers inherit it
        with self.accelerator.main_process_first():  # the synthetic set is generated once, by the main process
            self.train_set, self.val_set = load_splits(args)
        self.bad_images = BadImageReport(args.on_bad_sample)
        self.bad_images.record(problem for problem in self.train_set.problems + self.val_set.problems
                               if problem.action == "skipped")
        model = build_model(args, config, self.train_set.id2label)
        if self.accelerator.is_main_process:
            check_disk_space(self.output_dir, model, with_ema=bool(args.ema_decay))
        self.processor = DeTRLiteImageProcessor(size={"longest_edge": model.config.image_size})
        self._prepare(model)
        self.state, self.metrics, self.streak, self.step_skipped = TrainingState(), {}, 0, False
        self.evaluated = False  # in this process's run (a run resumed when finished has not evaluated yet)

    def _prepare(self, model: DeTRLiteForObjectDetection) -> None:
        """Data loader, optimizer, scheduler and EMA, wrapped by Accelerate."""
        args, accelerator = self.args, self.accelerator
        images = training_images(self.train_set, args, model.config.image_size, accelerator)
        self.augmented = SeededAugmentation(images, functools.partial(
            train_transforms, model.config.image_size, policy=args.augmentation), args.seed)
        # Workers are re-created each epoch (not persistent) so they see the epoch the augmentation is seeded by.
        loader = DataLoader(SkipBadImages(self.augmented, replace=True), batch_size=args.per_device_train_batch_size,
                            shuffle=True, drop_last=True, collate_fn=DetectionCollator(self.processor),
                            num_workers=args.dataloader_num_workers, worker_init_fn=ignore_stop_signals)
        # fused: one kernel for all parameters instead of a loop of small ops (CPU and CUDA).
        optimizer = torch.optim.AdamW(parameter_groups(model, args.learning_rate, args.backbone_learning_rate,
                                                       args.weight_decay), fused=True)
        self.model, self.optimizer, self.train_loader = accelerator.prepare(model, optimizer, loader)
        # The model itself, without the distributed and torch.compile wrappers (the same parameters): for the EMA,
        # evaluation and saving, whose inputs differ from the training batches.
        self.plain_model = accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not len(self.train_loader):  # drop_last: fewer images than one batch would train nothing, silently
            raise TrainingError(
                f"{args.data_dir or args.dataset_name}: split {args.train_split!r} has {len(self.train_set)} images, "
                f"fewer than one batch of {args.per_device_train_batch_size} x {accelerator.num_processes} processes. "
                "Lower --per_device_train_batch_size or add images.")
        steps_per_epoch = max(1, math.ceil(len(self.train_loader) / args.gradient_accumulation_steps))
        # With a time budget, this length stands only until the first fit (see `_fit_to_budget`).
        self.max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
        self.budget = TimeBudget(args.max_train_time * 60) if args.max_train_time else None
        drop_step = args.lr_drop_epochs * steps_per_epoch if args.lr_drop_epochs else None
        self.scheduler = build_scheduler(self.optimizer, args.lr_scheduler_type, args.num_warmup_steps,
                                         lambda: self.max_steps, drop_step)
        accelerator.register_for_checkpointing(self.scheduler)
        self.ema = None
        if args.ema_decay:
            self.ema = build_ema(self.plain_model, args.ema_decay)
            accelerator.register_for_checkpointing(self.ema)

    def train(self) -> dict:
        """Train to `max_steps`, evaluating and checkpointing on the way; returns the last metrics."""
        if self.args.with_tracking:
            hparams = {k: v for k, v in vars(self.args).items() if isinstance(v, (int, float, str, bool))}
            self.accelerator.init_trackers("detr_lite", config=hparams)
        if self.args.resume_from_checkpoint:
            self._resume()
        logger.info("Training on %d images (%d classes), validating on %d; %d steps of %d x %d images on %s, "
                    "mixed precision: %s", len(self.train_set), len(self.train_set.id2label), len(self.val_set),
                    self.max_steps, self.args.per_device_train_batch_size, self.accelerator.num_processes,
                    self.accelerator.device, self.accelerator.mixed_precision)
        self.progress = tqdm(total=self.max_steps, initial=self.state.step, desc="training",
                             disable=not self.accelerator.is_local_main_process)
        self.running = torch.zeros(1 + len(LOGGED_TERMS), device=self.accelerator.device)
        self.start = time.monotonic() - self.state.train_time
        self.model.train()
        try:
            with StopSignal() as self.stop:
                # Ends when finished (at once when resumed from a finished run), or stopped mid-epoch.
                while self.state.step < self.max_steps and self._train_epoch(self.state.epoch):
                    pass
        finally:
            self.progress.close()
        return self._finish()

    def _resume(self) -> None:
        checkpoint = resolve_checkpoint(self.output_dir, self.args.resume_from_checkpoint)
        self.state = TrainingState.from_dict(load_checkpoint(self.accelerator, checkpoint))
        self.max_steps = self.state.planned_steps or self.max_steps
        apply_schedule(self.scheduler)
        logger.info("Resumed from %s at step %d (epoch %d, batch %d)", checkpoint, self.state.step, self.state.epoch,
                    self.state.batch_in_epoch)

    def _train_epoch(self, epoch: int) -> bool:
        """One epoch, or what is left of it; False when `max_steps` ended it early (kept for an exact resume)."""
        state, args = self.state, self.args
        state.epoch = epoch
        self.train_loader.set_epoch(epoch)
        self.augmented.set_epoch(epoch)
        loader = self.train_loader
        if state.batch_in_epoch:
            loader = self.accelerator.skip_first_batches(self.train_loader, state.batch_in_epoch)
        for batch in loader:
            if self._train_batch(batch) and state.step >= self.max_steps:
                break
        if state.step >= self.max_steps and state.batch_in_epoch < len(self.train_loader):
            return False
        state.batch_in_epoch, state.epoch = 0, epoch + 1
        if args.eval_interval is None and not self.streak:
            self._evaluate()
        if args.checkpoint_interval is None and not self.streak:
            self._checkpoint()
        return True

    def _train_batch(self, batch: dict) -> bool:
        """Forward and backward one micro-batch; True when it completed an optimizer step."""
        accelerator, args = self.accelerator, self.args
        self.bad_images.record(batch["bad_images"])
        with accelerator.accumulate(self.model):
            terms = self._loss_terms(batch)
            nonfinite, signum = self._synced_flags(terms[0])
            self.step_skipped |= nonfinite
            if not nonfinite:
                accelerator.backward(terms[0])
            if not self.step_skipped:
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                self.optimizer.step()
            self.optimizer.zero_grad()  # at the end of a skipped step this drops its accumulated gradients
        self.state.batch_in_epoch += 1
        self.state.images_seen += len(batch["labels"]) * accelerator.num_processes
        self.running += torch.stack([term.detach().float() for term in terms])  # a skipped step logs NaN
        if not accelerator.sync_gradients:
            return False
        self._end_step(signum)
        return True

    def _loss_terms(self, batch: dict) -> list[torch.Tensor]:
        """[total loss (with its graph), *LOGGED_TERMS]; all NaN when the matcher reports non-finite predictions."""
        try:
            outputs = self.model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"],
                                 labels=batch["labels"])
        except NonFinitePredictionError:
            nan = torch.full((), float("nan"), device=batch["pixel_values"].device)
            return [nan] * (1 + len(LOGGED_TERMS))
        return [outputs.loss, *(outputs.loss_dict[name] for name in LOGGED_TERMS)]

    def _synced_flags(self, loss: torch.Tensor) -> tuple[bool, int]:
        """(any process's loss is non-finite, the signal any process received): the micro-batch's one host sync,
        so that all processes skip or stop together and stay in lockstep."""
        flags = torch.stack([(~torch.isfinite(loss.detach())).float(),
                             torch.tensor(float(self.stop.signum), device=loss.device)])
        flags = self.accelerator.gather(flags).view(-1, 2).max(dim=0).values.tolist()
        return flags[0] > 0, int(flags[1])

    def _end_step(self, signum: int) -> None:
        """After an optimizer step: schedule, the non-finite policy, EMA, logging, evaluation, checkpoint, signal."""
        state, args = self.state, self.args
        self.scheduler.step()
        state.step += 1
        self.progress.update(1)
        self._fit_to_budget()
        if self.step_skipped:
            state.skipped_steps += 1
            logger.warning("step %d: the loss is NaN or inf; update skipped (%d in a row, %d in all).",
                           state.step, self.streak + 1, state.skipped_steps)
        elif self.ema is not None:
            self.ema.update(self.plain_model, step=state.step)
        self.streak = nonfinite_streak(self.streak, self.step_skipped, args.max_consecutive_nonfinite, state.step,
                                       self.output_dir)
        self.step_skipped = False
        if state.step % args.logging_steps == 0:
            self._log_losses()
        if is_due(state.step, args.eval_interval, self.streak):
            self._evaluate()
        if is_due(state.step, args.checkpoint_interval, self.streak):
            self._checkpoint()
        if signum:
            self._stop_for_signal(signum)

    def _fit_to_budget(self) -> None:
        """With --max_train_time, (re)fit the run's length to the budget from the time its steps took so far.

        Every process gets the same length: the elapsed times are averaged over processes first.
        """
        state = self.state
        if self.budget is None or not self.budget.wants_fit(state.step, self.max_steps):
            return
        elapsed = torch.tensor(time.monotonic() - self.start - state.eval_time, device=self.accelerator.device)
        elapsed = float(self.accelerator.reduce(elapsed, "mean"))
        self.max_steps = state.planned_steps = self.budget.fit(state.step, elapsed)
        self.progress.total = self.max_steps
        self.progress.refresh()
        logger.info("step %d: %.3f s a step, so %d steps fit --max_train_time %g", state.step, elapsed / state.step,
                    self.max_steps, self.args.max_train_time)

    def _log_losses(self) -> None:
        """The mean of each loss term since the last log, over steps and processes: to the log and the trackers."""
        window = self.args.logging_steps * self.args.gradient_accumulation_steps
        means = (self.accelerator.reduce(self.running, "mean") / window).tolist()
        self.running.zero_()
        logs = {"loss": means[0], **dict(zip(LOGGED_TERMS, means[1:])), "lr": self.scheduler.get_last_lr()[-1]}
        self.progress.set_postfix(loss=f"{logs['loss']:.3f}", lr=f"{logs['lr']:.2e}")
        logger.info("step %d: %s", self.state.step, ", ".join(f"{name} {value:.4g}" for name, value in logs.items()))
        if self.args.with_tracking:
            self.accelerator.log({f"train/{name}": value for name, value in logs.items()}, step=self.state.step)

    def _checkpoint(self) -> None:
        self.state.train_time = time.monotonic() - self.start
        self.state.last_checkpoint_step = self.state.step
        save_checkpoint(self.accelerator, self.output_dir, self.state.to_dict(), self.args.checkpoints_total_limit)

    def _evaluate(self) -> None:
        """Evaluate (the EMA weights when kept), log the AP figures, save the model when it is the best so far."""
        state, accelerator = self.state, self.accelerator
        eval_model = self.ema.module if self.ema is not None else self.plain_model
        began = time.monotonic()
        self.metrics = evaluate(accelerator, eval_model, self.processor, self.val_set, self.args, self.bad_images)
        state.eval_time += time.monotonic() - began
        state.last_eval_step, self.evaluated = state.step, True
        if accelerator.is_main_process:
            state.train_time = time.monotonic() - self.start
            state.learning_curve.append({"step": state.step, "AP": self.metrics["AP"], "AP50": self.metrics["AP50"],
                                         "minutes": round(state.train_time / 60, 2)})
            logger.info("step %d: AP %.4f AP50 %.4f", state.step, self.metrics["AP"], self.metrics["AP50"])
            if self.args.with_tracking:
                accelerator.log({f"eval/{k}": v for k, v in self.metrics.items() if isinstance(v, float)},
                                step=state.step)
            if is_new_best(self.metrics["AP"], state.best_AP):
                state.best_AP = self.metrics["AP"]
                save_model(self.output_dir / "best", eval_model, self.processor, self.metrics, self._card_info())
        accelerator.wait_for_everyone()
        self.model.train()

    def _card_info(self) -> dict:
        """What the model card says about the run."""
        args, state = self.args, self.state
        return {"model_name": args.hub_model_id or self.output_dir.name,
                "dataset_name": args.dataset_name or Path(args.data_dir).name, "train_split": args.train_split,
                "eval_split": args.val_split, "command": args.command or "detr_lite.training.train(...)",
                "steps": state.step, "images_seen": state.images_seen,
                "train_time": f"{state.train_time / 60:.1f} min"}

    def _stop_for_signal(self, signum: int) -> None:
        self.progress.close()
        if not self.streak and self.state.last_checkpoint_step != self.state.step:
            self._checkpoint()
        kept = list_checkpoints(self.output_dir)
        saved = f"latest checkpoint {kept[-1]}" if kept else "no checkpoint"
        resume = (f"{self.args.command} --resume_from_checkpoint latest" if self.args.command
                  else "train(..., resume_from_checkpoint='latest')")
        message = (f"Stopped by {signal.Signals(signum).name} at step {self.state.step} of {self.max_steps} (epoch "
                   f"{self.state.epoch}, batch {self.state.batch_in_epoch}); {saved}. Resume with:\n  {resume}")
        logger.warning(message)
        if self.args.with_tracking:
            self.accelerator.end_training()
        raise TrainingInterrupted(signum, message)

    def _finish(self) -> dict:
        """The last evaluation and checkpoint if due, `all_results.json`, the sample prediction, the upload."""
        state = self.state
        if state.last_eval_step != state.step or not self.evaluated:
            self._evaluate()
        if state.last_checkpoint_step != state.step and not self.streak:
            self._checkpoint()
        skipped = sorted(set(gather_object(list(self.bad_images.skipped))))  # every process's unreadable images
        if self.accelerator.is_main_process:
            self._report(skipped)
        if self.args.with_tracking:
            self.accelerator.end_training()
        return self.metrics

    def _report(self, skipped: list[str]) -> None:
        """Main process: results file, metrics table, sample prediction and the Hub upload."""
        state, output_dir = self.state, self.output_dir
        if skipped:
            logger.warning("Skipped %d unreadable images: %s", len(skipped), ", ".join(skipped))
        results = {**self.metrics, "train_steps": state.step, "train_images_seen": state.images_seen,
                   "train_runtime_s": round(state.train_time, 1), "best_AP": state.best_AP,
                   "learning_curve": state.learning_curve, "skipped_samples": len(skipped), "skipped_images": skipped}
        (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
        print(format_metrics_table(self.metrics))
        best = DeTRLiteForObjectDetection.from_pretrained(output_dir / "best").to(self.accelerator.device)
        sample = save_sample_prediction(best, self.processor, self.val_set, output_dir)
        print(f"\nBest model (AP {state.best_AP:.4f}): {output_dir / 'best'}\n"
              f"Metrics: {output_dir / 'all_results.json'}\nCheckpoints: {output_dir / 'checkpoints'}\n"
              f"Sample prediction: {sample}\nData: {self.args.data_dir or self.args.dataset_name}")
        if self.args.push_to_hub:
            push_to_hub(output_dir / "best", self.args.hub_model_id)


def evaluate(accelerator, model, processor: DeTRLiteImageProcessor, val, args: TrainingArguments,
             bad_images: BadImageReport) -> dict:
    """COCO metrics on the validation split; each process predicts its shard, the main process scores."""
    shard = range(accelerator.process_index, len(val), accelerator.num_processes)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)
    predictions = predict_dataset(model, processor, val, batch_size=args.per_device_eval_batch_size,
                                  indices=shard, device=accelerator.device, autocast_dtype=dtype,
                                  show_progress=accelerator.is_local_main_process, bad_images=bad_images)
    predictions = gather_object(predictions) if accelerator.num_processes > 1 else predictions
    if not accelerator.is_main_process:
        return {}
    return score_predictions(val, predictions, args.data_dir)
