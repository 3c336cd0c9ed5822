"""Train and evaluate a DeTR-Lite detector with Accelerate.

    python scripts/run_detection.py            # built-in synthetic shapes, quickstart preset, CPU-friendly
    accelerate launch scripts/run_detection.py --config configuration/detr_lite_r50.json \\
        --data_dir data/coco --train_split train2017 --val_split val2017 --output_dir out

A preset (`--config`) gives the model ("model") and the recipe ("training", "data"); any flag overrides it.
"""

import argparse
import functools
import json
import logging
import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, gather_object, set_seed
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from detr_lite import DeTRLiteConfig, DeTRLiteForObjectDetection, DeTRLiteImageProcessor
from detr_lite.checkpointing import (CheckpointError, check_disk_space, list_checkpoints, load_checkpoint,
                                    resolve_checkpoint, save_checkpoint, write_atomically)
from detr_lite.data import (DEFAULT_MEMORY_LIMIT, BadImageError, BadImageReport, DecodedImageCache, DetectionCollator,
                            SeededAugmentation, SkipBadImages, cached_size, load_detection_dataset, train_transforms)
from detr_lite.data.synthetic import make_synthetic_dataset
from detr_lite.evaluation import format_metrics_table
from detr_lite.inference import predict_dataset, score_predictions
from detr_lite.loss_detr_lite import NonFinitePredictionError
from detr_lite.model_card import write_model_card
from detr_lite.optimization import apply_schedule, build_scheduler, parameter_groups

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configuration" / "detr_lite_quickstart.json"
R50 = REPO / "configuration" / "detr_lite_r50.json"
logger = logging.getLogger("run_detection")
EPILOG = """faults:
  A step whose loss is NaN or inf is skipped (no update) and logged; after --max_consecutive_nonfinite such
  steps in a row the run stops with exit status 1, keeping the last checkpoint written before the divergence.

  SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) stops training after the current step, saves a
  checkpoint and exits with status 128 + the signal number: 130 for SIGINT, 143 for SIGTERM (the shell's
  convention, so a job script can tell "interrupted, resumable" from "finished"). Further signals are ignored
  until the checkpoint is written. Continue with --resume_from_checkpoint latest.

  A checkpoint is written to checkpoints/.partial-step_N and renamed to step_N once complete, so after a
  SIGKILL or a crash (during training or during that write) --resume_from_checkpoint latest continues from
  the last complete checkpoint, at the same step, learning rate, RNG state and batch. Before training, the run
  stops if --output_dir cannot be created or written, or has less free space than one checkpoint plus the best
  model. A write that fails later (disk full) stops the run with exit status 1; the incomplete folder is
  removed and the earlier checkpoints and best/ are left as they were.

  Resuming reads only tensors and plain data: a checkpoint file holding other Python objects (tampered
  with) is refused, naming the file, before anything is loaded.

bad data:
  Boxes partly outside the image are clipped; boxes without area or not finite, and duplicate or dangling
  annotations, are dropped and counted; an unreadable annotation file, unknown category or malformed field
  stops the run naming the file and field. An unreadable image (missing, empty, truncated, not an image) is
  skipped with one warning and counted in all_results.json ("skipped_samples"), or stops the run with
  --on_bad_sample error. An image over --max_image_pixels always stops the run.
  python scripts/validate_dataset.py --data_dir DIR lists every problem at once.
"""

# Recipe defaults when neither the preset nor a flag sets them (DETR's values).
DEFAULTS = {
    "learning_rate": 1e-4,
    "backbone_learning_rate": 1e-5,
    "weight_decay": 1e-4,
    "max_grad_norm": 0.1,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 8,
    "num_train_epochs": 50,
    "max_train_steps": None,
    "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "step",
    "num_warmup_steps": 0,
    "lr_drop_epochs": None,
    "ema_decay": 0.0,
    "augmentation": "detr",
    "eval_every": "epoch",
    "checkpointing_steps": "epoch",
    "checkpoints_total_limit": 2,
    "dataloader_num_workers": 2,
    "cache_images": "auto",
    "seed": 42,
    "logging_steps": 10,
    "mixed_precision": None,  # None: what accelerate launch says (fp32 under plain python)
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--config", help="preset JSON (default: quickstart without --data_dir, else detr_lite_r50)")
    add("--data_dir", help="dataset folder (COCO, VOC or Hugging Face layout); default: built-in synthetic set")
    add("--train_split", default="train")
    add("--val_split", default="val")
    add("--output_dir", help="default: out/quickstart for the synthetic set, else out")
    add("--model_name_or_path", help="start from a saved DeTR-Lite model (e.g. a converted COCO DETR)")
    add("--per_device_train_batch_size", type=int)
    add("--per_device_eval_batch_size", type=int)
    add("--learning_rate", type=float)
    add("--backbone_learning_rate", type=float)
    add("--weight_decay", type=float)
    add("--max_grad_norm", type=float)
    add("--num_train_epochs", type=int)
    add("--max_train_steps", type=int, help="overrides num_train_epochs")
    add("--gradient_accumulation_steps", type=int)
    add("--lr_scheduler_type", choices=("constant", "step", "cosine"))
    add("--num_warmup_steps", type=int)
    add("--lr_drop_epochs", type=int, help="step scheduler: epoch at which the learning rate drops x0.1")
    add("--ema_decay", type=float, help="keep an exponential moving average of the weights (0 = off)")
    add("--augmentation", choices=("detr", "flip"), help="detr: flip + multi-scale + crop; flip: flip only")
    add("--eval_every", help="'epoch', or a number of steps")
    add("--checkpointing_steps", help="'epoch', or a number of steps")
    add("--checkpoints_total_limit", type=int, help="keep the last N checkpoints")
    add("--resume_from_checkpoint", help="a checkpoint folder, or 'latest'")
    add("--max_consecutive_nonfinite", type=int, default=5,
        help="stop when this many steps in a row have a NaN/inf loss (each is skipped); default 5")
    add("--on_bad_sample", choices=("skip", "error"), default="skip",
        help="an unreadable image: skip it with a warning (default) or stop")
    add("--max_image_pixels", type=int, default=Image.MAX_IMAGE_PIXELS,
        help=f"refuse images with more pixels (Pillow's decompression-bomb guard; 0: no limit); "
             f"default {Image.MAX_IMAGE_PIXELS:,}")
    add("--dataloader_num_workers", type=int)
    add("--cache_images", choices=("auto", "yes", "no"),
        help="decode the training images once and keep them in memory at the canvas size; auto: when that "
             "takes at most 4 GiB")
    add("--max_train_samples", type=int)
    add("--max_eval_samples", type=int)
    add("--seed", type=int)
    add("--logging_steps", type=int)
    add("--mixed_precision", choices=("no", "fp16", "bf16", "auto"),
        help="auto: bf16 where the GPU or CPU computes it natively, else no. Default: what accelerate launch "
             "says, else the preset's (auto for the quickstart), else no")
    add("--torch_compile", action="store_true", help="compile the model with torch.compile (through Accelerate)")
    add("--torch_compile_backend", default="inductor", help="torch.compile backend for --torch_compile")
    add("--with_tracking", action="store_true", help="log to Accelerate trackers")
    add("--report_to", default="tensorboard", help="tracker name(s) for --with_tracking, e.g. tensorboard")
    add("--push_to_hub", action="store_true")
    add("--hub_model_id")
    return parser.parse_args(argv)


def resolve_settings(args: argparse.Namespace) -> tuple[argparse.Namespace, dict, dict]:
    """Fill unset flags from the preset, then from DEFAULTS. Returns (args, model preset, data preset)."""
    preset_path = Path(args.config) if args.config else (QUICKSTART if args.data_dir is None else R50)
    if not preset_path.is_file():
        raise SystemExit(f"--config {preset_path}: no such preset file.")
    try:
        preset = json.loads(preset_path.read_text())
    except json.JSONDecodeError as error:
        raise SystemExit(f"--config {preset_path} is not valid JSON: {error}") from error
    unknown = set(preset.get("training", {})) - set(DEFAULTS)
    if unknown:
        raise SystemExit(f"--config {preset_path}: unknown training settings {sorted(unknown)}.")
    args.config = str(preset_path)
    for key, default in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, preset.get("training", {}).get(key, default))
    if args.output_dir is None:
        args.output_dir = "out/quickstart" if args.data_dir is None else "out"
    return args, preset.get("model", {}), preset.get("data", {})


def resolve_mixed_precision(requested: str | None, flag_given: bool) -> str | None:
    """The precision to hand Accelerate: an explicit flag, else `accelerate launch`'s, else the preset's.

    "auto" becomes bf16 only where the hardware computes it natively (a GPU with bf16 units, a CPU with
    AVX512-BF16 or AMX): emulated bf16 is slower than float32, which would defeat its purpose.
    """
    if not flag_given and "ACCELERATE_MIXED_PRECISION" in os.environ:
        return None  # Accelerator reads what the launcher set
    if requested != "auto":
        return requested
    return "bf16" if native_bf16() else "no"


def native_bf16() -> bool:
    """Whether the device training will run on computes bf16 in hardware."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    # torch exposes these CPU feature probes only as private functions; if they go away, assume no support.
    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def check_hub_access(args: argparse.Namespace) -> None:
    """With --push_to_hub, fail now, not after hours of training, if the Hub cannot be reached."""
    if not args.push_to_hub:
        return
    from huggingface_hub import HfApi, constants

    if not args.hub_model_id:
        raise SystemExit("--push_to_hub needs --hub_model_id (e.g. me/detr-lite-shapes).")
    if constants.is_offline_mode():
        raise SystemExit("--push_to_hub: HF_HUB_OFFLINE is set, so the model cannot be uploaded. Unset it or drop "
                         "--push_to_hub and upload later with model.push_to_hub().")
    try:
        HfApi().whoami()
    except Exception as error:  # network down, no token, DNS failure: all mean "cannot push"
        raise SystemExit(f"--push_to_hub: the Hugging Face Hub is not reachable or you are not logged in ({error}). "
                         "Run `huggingface-cli login` where there is network, or drop --push_to_hub.") from error


def every(value: str | int, name: str) -> int | None:
    """'epoch' -> None (once per epoch), else a positive step interval."""
    if str(value) == "epoch":
        return None
    try:
        steps = int(value)
    except ValueError:
        raise SystemExit(f"--{name} must be 'epoch' or a number of steps, got {value!r}.") from None
    if steps < 1:
        raise SystemExit(f"--{name} must be at least 1, got {steps}.")
    return steps


class StopSignal:
    """SIGINT/SIGTERM only record the signal; the training loop stops at the end of the step and checkpoints.

    Later signals are ignored, so a second Ctrl-C cannot kill the process in the middle of that checkpoint.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous = {sig: signal.signal(sig, self._record) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _record(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum:
            logger.warning("%s ignored: already stopping, the checkpoint is being written.", name)
            return
        self.signum = signum
        logger.warning("%s received: finishing this step, then saving a checkpoint and exiting.", name)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM (sent to the whole process group by Ctrl-C or a scheduler), so
    the batches of the step being finished still arrive; workers exit when the main process does."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def training_loss(model, batch: dict) -> torch.Tensor:
    """The batch's loss, or NaN when the matcher reports non-finite predictions (a diverged model)."""
    try:
        return model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"]).loss
    except NonFinitePredictionError:
        return torch.full((), float("nan"), device=batch["pixel_values"].device)


def diverged_message(streak: int, step: int, output_dir: Path) -> str:
    kept = list_checkpoints(output_dir)
    where = (f"The last checkpoint before the divergence is kept: {kept[-1]} (--resume_from_checkpoint latest "
             "picks it)." if kept else "No checkpoint was written before the divergence.")
    return (f"Training diverged: the loss was NaN or inf for {streak} steps in a row (steps {step - streak + 1}-"
            f"{step}); each was skipped, and the run stopped. {where} Try a lower --learning_rate and "
            "--backbone_learning_rate, more warmup (--num_warmup_steps), gradient clipping (--max_grad_norm 0.1), "
            "and check the data for broken images or boxes.")


def load_data(args: argparse.Namespace, data_preset: dict):
    if args.data_dir is None:
        args.data_dir = str(make_synthetic_dataset(
            data_preset.get("synthetic_dir", "data/synthetic"), num_train=data_preset.get("num_train", 2000),
            num_val=data_preset.get("num_val", 200), seed=data_preset.get("seed", 0), progress=True,
        ))
    try:
        train = load_detection_dataset(args.data_dir, args.train_split)
        val = load_detection_dataset(args.data_dir, args.val_split)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    if train.id2label != val.id2label:
        raise SystemExit(f"{args.data_dir}: splits {args.train_split!r} and {args.val_split!r} have different "
                         f"classes ({train.id2label} vs {val.id2label}).")
    if args.max_train_samples:
        train.records = train.records[: args.max_train_samples]
    if args.max_eval_samples:
        val.records = val.records[: args.max_eval_samples]
    for split, dataset in ((args.train_split, train), (args.val_split, val)):
        if not len(dataset):
            raise SystemExit(f"{args.data_dir}: split {split!r} has no images; there is nothing to "
                             f"{'train' if dataset is train else 'evaluate'} on. Check the split's annotations.")
    return train, val


def training_images(train, args: argparse.Namespace, image_size: int, accelerator: Accelerator):
    """The training split, decoded once into memory at the canvas size when --cache_images allows it."""
    if args.cache_images == "no" or (args.cache_images == "auto"
                                      and cached_size(train, image_size) > DEFAULT_MEMORY_LIMIT):
        return train
    workers = max(1, (os.cpu_count() or 1) // accelerator.num_processes)
    return DecodedImageCache(train, image_size, num_workers=workers, show_progress=accelerator.is_local_main_process)


def build_model(args: argparse.Namespace, model_preset: dict, id2label: dict[int, str]) -> DeTRLiteForObjectDetection:
    if args.model_name_or_path:
        return DeTRLiteForObjectDetection.from_pretrained(
            args.model_name_or_path, id2label=id2label, label2id={v: k for k, v in id2label.items()},
            ignore_mismatched_sizes=True,
        )
    try:
        config = DeTRLiteConfig(**model_preset, id2label=id2label)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"--config {args.config}: invalid model settings: {error}") from error
    if config.freeze_batch_norm and not config.use_pretrained_backbone:
        logger.warning("freeze_batch_norm with a randomly initialised backbone: the frozen statistics are "
                       "meaningless. Set freeze_batch_norm=false when training the backbone from scratch.")
    return DeTRLiteForObjectDetection(config)


def evaluate(accelerator: Accelerator, model, processor, val, args, bad_images: BadImageReport) -> dict:
    """COCO metrics on the validation split; each process predicts its shard, the main process scores."""
    shard = range(accelerator.process_index, len(val), accelerator.num_processes)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)
    predictions = predict_dataset(model, processor, val, batch_size=args.per_device_eval_batch_size,
                                  indices=shard, device=accelerator.device, autocast_dtype=dtype,
                                  show_progress=accelerator.is_local_main_process, bad_images=bad_images)
    predictions = gather_object(predictions) if accelerator.num_processes > 1 else predictions
    metrics = {}
    if accelerator.is_main_process:
        metrics = score_predictions(val, predictions, args.data_dir)
    return metrics


def save_model(folder: Path, model, processor, metrics: dict, info: dict) -> None:
    """save_pretrained (safetensors + code) + processor + model card, swapped into place when complete."""
    model.config.use_pretrained_backbone = False  # the checkpoint carries the backbone weights
    hint = ("The checkpoints are not affected: free disk space, then continue with --resume_from_checkpoint "
            "latest.")
    with write_atomically(folder, hint) as partial:
        model.save_pretrained(partial)
        processor.save_pretrained(partial)
        write_model_card(partial, model.config, metrics, info)
        (partial / "eval_results.json").write_text(json.dumps(metrics, indent=2))


def save_sample_prediction(model, processor, val, output_dir: Path) -> Path | None:
    """An annotated prediction on the first validation image, so a user sees what the model does: the
    detections scoring above 0.5, or the 3 best when none does."""
    from detr_lite.visualization import draw_detections

    sample = SkipBadImages(val, replace=True)[0]  # the first readable validation image
    if "image" not in sample:
        return None
    inputs = processor(images=sample["image"], return_tensors="pt")
    model.eval()
    with torch.inference_mode():
        outputs = model(pixel_values=inputs["pixel_values"].to(model.device),
                        pixel_mask=inputs["pixel_mask"].to(model.device))
    size = [(sample["image"].height, sample["image"].width)]
    detections = processor.post_process_object_detection(outputs, threshold=0.5, target_sizes=size)[0]
    if not len(detections["scores"]):
        # A short run may score nothing above 0.5: an empty picture would hide what the model has learned.
        detections = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=size, top_k=3)[0]
        logger.info("No detection on the sample image scores above 0.5; drawing the 3 best (scores %s).",
                    ", ".join(f"{score:.2f}" for score in detections["scores"].tolist()))
    path = output_dir / "sample_prediction.jpg"
    draw_detections(sample["image"], {k: v.cpu() for k, v in detections.items()}, model.config.id2label).save(path)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    flag_precision = args.mixed_precision
    args, model_preset, data_preset = resolve_settings(args)
    args.mixed_precision = resolve_mixed_precision(args.mixed_precision, flag_precision is not None)
    check_hub_access(args)
    if args.max_consecutive_nonfinite < 1:
        raise SystemExit(f"--max_consecutive_nonfinite must be at least 1, got {args.max_consecutive_nonfinite}.")
    if args.max_image_pixels < 0:
        raise SystemExit(f"--max_image_pixels must be 0 (no limit) or positive, got {args.max_image_pixels}.")
    eval_every = every(args.eval_every, "eval_every")
    checkpoint_every = every(args.checkpointing_steps, "checkpointing_steps")
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        # Accelerate's multi-process launcher (torchrun) only forms a CPU process group (gloo) when told it is on
        # CPU; without CUDA there is nothing else to run on.
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        dynamo_backend=args.torch_compile_backend if args.torch_compile else None,
        log_with=args.report_to.split(",") if args.with_tracking else None,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
                        if accelerator.is_main_process else logging.ERROR)
    if accelerator.is_main_process:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SystemExit(f"--output_dir {output_dir} cannot be created: {error}") from error
        if not os.access(output_dir, os.W_OK):
            raise SystemExit(f"--output_dir {output_dir} is not writable.")
    set_seed(args.seed)
    Image.MAX_IMAGE_PIXELS = args.max_image_pixels or None  # DataLoader workers inherit it

    with accelerator.main_process_first():  # the synthetic set is generated once, by the main process
        train, val = load_data(args, data_preset)
    bad_images = BadImageReport(args.on_bad_sample)
    bad_images.record(problem for problem in train.problems + val.problems if problem.action == "skipped")
    model = build_model(args, model_preset, train.id2label)
    if accelerator.is_main_process:
        check_disk_space(output_dir, model, with_ema=bool(args.ema_decay))
    processor = DeTRLiteImageProcessor(size=model.config.image_size)
    collator = DetectionCollator(processor)
    augmented = SeededAugmentation(training_images(train, args, model.config.image_size, accelerator), functools.partial(
        train_transforms, model.config.image_size, policy=args.augmentation), args.seed)
    # Workers are re-created each epoch (not persistent) so they see the epoch the augmentation is seeded by.
    train_loader = DataLoader(SkipBadImages(augmented, replace=True), batch_size=args.per_device_train_batch_size,
                              shuffle=True, drop_last=True, collate_fn=collator,
                              num_workers=args.dataloader_num_workers, worker_init_fn=ignore_stop_signals)
    # fused: one kernel for all parameters instead of a loop of small ops; 2.6 against 11.8 ms per step for the
    # quickstart model on a 2-core CPU, and supported on CUDA too.
    optimizer = torch.optim.AdamW(parameter_groups(model, args.learning_rate, args.backbone_learning_rate,
                                                   args.weight_decay), fused=True)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    # The model itself, without the distributed and torch.compile wrappers (the same parameters): for the EMA,
    # evaluation and saving, whose inputs differ from the training batches.
    plain_model = accelerator.unwrap_model(model, keep_torch_compile=False)
    if not len(train_loader):  # drop_last: fewer images than one batch would train nothing, silently
        raise SystemExit(f"{args.data_dir}: split {args.train_split!r} has {len(train)} images, fewer than one batch "
                         f"of {args.per_device_train_batch_size} x {accelerator.num_processes} processes. Lower "
                         "--per_device_train_batch_size or add images.")
    steps_per_epoch = max(1, math.ceil(len(train_loader) / args.gradient_accumulation_steps))
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    drop_step = args.lr_drop_epochs * steps_per_epoch if args.lr_drop_epochs else None
    scheduler = build_scheduler(optimizer, args.lr_scheduler_type, args.num_warmup_steps, max_steps, drop_step)
    accelerator.register_for_checkpointing(scheduler)
    ema = None
    if args.ema_decay:
        ema = torch.optim.swa_utils.AveragedModel(
            plain_model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema_decay))
        accelerator.register_for_checkpointing(ema)

    command = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    if args.with_tracking:
        hparams = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("detr_lite", config=hparams)

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_AP": -1.0, "images_seen": 0, "train_time": 0.0,
             "last_eval_step": -1, "last_checkpoint_step": -1, "skipped_steps": 0, "learning_curve": []}
    if args.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(output_dir, args.resume_from_checkpoint)
        state.update(load_checkpoint(accelerator, checkpoint))
        apply_schedule(scheduler)
        logger.info("Resumed from %s at step %d (epoch %d, batch %d)", checkpoint, state["step"], state["epoch"],
                    state["batch_in_epoch"])

    logger.info("Training on %d images (%d classes), validating on %d; %d steps of %d x %d images on %s, "
                "mixed precision: %s", len(train), len(train.id2label), len(val), max_steps,
                args.per_device_train_batch_size, accelerator.num_processes, accelerator.device,
                accelerator.mixed_precision)
    info = {"model_name": args.hub_model_id or output_dir.name, "dataset_name": Path(args.data_dir).name,
            "train_split": args.train_split, "eval_split": args.val_split, "command": command}
    progress = tqdm(total=max_steps, initial=state["step"], desc="training",
                    disable=not accelerator.is_local_main_process)
    metrics, evaluations = {}, []
    running_loss, start = torch.zeros((), device=accelerator.device), time.monotonic() - state["train_time"]

    def checkpoint() -> None:
        state["train_time"] = time.monotonic() - start
        state["last_checkpoint_step"] = state["step"]
        save_checkpoint(accelerator, output_dir, dict(state), args.checkpoints_total_limit)

    def evaluate_and_keep_best() -> dict:
        eval_model = ema.module if ema is not None else plain_model
        result = evaluate(accelerator, eval_model, processor, val, args, bad_images)
        state["last_eval_step"] = state["step"]
        evaluations.append(state["step"])
        if accelerator.is_main_process:
            state["train_time"] = time.monotonic() - start
            # In the checkpointed state, so a resumed run reports the whole curve.
            state["learning_curve"].append({"step": state["step"], "AP": result["AP"], "AP50": result["AP50"],
                                            "minutes": round(state["train_time"] / 60, 2)})
            logger.info("step %d: AP %.4f AP50 %.4f", state["step"], result["AP"], result["AP50"])
            if args.with_tracking:
                accelerator.log({f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}, step=state["step"])
            if result["AP"] > state["best_AP"]:
                state["best_AP"] = result["AP"]
                save_model(output_dir / "best", eval_model, processor, result,
                           {**info, "steps": state["step"], "images_seen": state["images_seen"],
                            "train_time": f"{state['train_time'] / 60:.1f} min"})
        accelerator.wait_for_everyone()
        return result

    def stop_for_signal(signum: int) -> None:
        progress.close()
        if not nonfinite_streak and state["last_checkpoint_step"] != state["step"]:
            checkpoint()
        kept = list_checkpoints(output_dir)
        saved = f"latest checkpoint {kept[-1]}" if kept else "no checkpoint"
        logger.warning("Stopped by %s at step %d of %d (epoch %d, batch %d); %s. Resume with:\n  %s "
                       "--resume_from_checkpoint latest", signal.Signals(signum).name, state["step"], max_steps,
                       state["epoch"], state["batch_in_epoch"], saved, command)
        if args.with_tracking:
            accelerator.end_training()
        raise SystemExit(128 + signum)

    stop = StopSignal()
    nonfinite_streak, step_skipped = 0, False
    model.train()
    for epoch in range(state["epoch"], num_epochs):
        if state["step"] >= max_steps:
            break  # resumed from a finished run: nothing left to train
        state["epoch"] = epoch
        train_loader.set_epoch(epoch)
        augmented.set_epoch(epoch)
        loader = train_loader
        if state["batch_in_epoch"]:
            loader = accelerator.skip_first_batches(train_loader, state["batch_in_epoch"])
        for batch in loader:
            bad_images.record(batch["bad_images"])
            with accelerator.accumulate(model):
                loss = training_loss(model, batch)
                # The one host sync of the micro-batch: every process learns whether any loss is non-finite and
                # whether any received a stop signal, so all skip or stop together and stay in lockstep.
                flags = torch.stack([(~torch.isfinite(loss.detach())).float(),
                                     torch.tensor(float(stop.signum), device=loss.device)])
                flags = accelerator.gather(flags).view(-1, 2).max(dim=0).values.tolist()
                nonfinite, signum = flags[0] > 0, int(flags[1])
                step_skipped |= nonfinite
                if not nonfinite:
                    accelerator.backward(loss)
                if not step_skipped:
                    if accelerator.sync_gradients and args.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                optimizer.zero_grad()  # at the end of a skipped step this drops its accumulated gradients
            state["batch_in_epoch"] += 1
            state["images_seen"] += len(batch["labels"]) * accelerator.num_processes
            running_loss += loss.detach()  # a skipped step makes the logged mean NaN, as it should
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state["step"] += 1
            progress.update(1)
            if step_skipped:
                nonfinite_streak += 1
                state["skipped_steps"] += 1
                logger.warning("step %d: the loss is NaN or inf; update skipped (%d in a row, %d in all).",
                               state["step"], nonfinite_streak, state["skipped_steps"])
                if nonfinite_streak >= args.max_consecutive_nonfinite:
                    progress.close()
                    raise SystemExit(diverged_message(nonfinite_streak, state["step"], output_dir))
            else:
                nonfinite_streak = 0
                if ema is not None:
                    ema.update_parameters(plain_model)
            step_skipped = False
            if state["step"] % args.logging_steps == 0:
                loss = accelerator.reduce(running_loss, "mean").item() / (
                    args.logging_steps * args.gradient_accumulation_steps)
                running_loss.zero_()
                progress.set_postfix(loss=f"{loss:.3f}", lr=f"{scheduler.get_last_lr()[-1]:.2e}")
                if args.with_tracking:
                    accelerator.log({"train/loss": loss, "train/lr": scheduler.get_last_lr()[-1]},
                                    step=state["step"])
            # Neither evaluate nor checkpoint weights that give a non-finite loss: `latest` must stay a good one.
            if eval_every and state["step"] % eval_every == 0 and not nonfinite_streak:
                metrics = evaluate_and_keep_best()
                model.train()
            if checkpoint_every and state["step"] % checkpoint_every == 0 and not nonfinite_streak:
                checkpoint()
            if signum:
                stop_for_signal(signum)
            if state["step"] >= max_steps:
                break
        if state["step"] >= max_steps and state["batch_in_epoch"] < len(train_loader):
            break  # stopped mid-epoch: keep batch_in_epoch for an exact resume
        state["batch_in_epoch"] = 0
        state["epoch"] = epoch + 1
        if eval_every is None and not nonfinite_streak:
            metrics = evaluate_and_keep_best()
            model.train()
        if checkpoint_every is None and not nonfinite_streak:
            checkpoint()
    stop.restore()
    progress.close()
    if state["last_eval_step"] != state["step"] or not evaluations:
        metrics = evaluate_and_keep_best()
    if state["last_checkpoint_step"] != state["step"] and not nonfinite_streak:
        checkpoint()

    skipped = sorted(set(gather_object(list(bad_images.skipped))))  # every process's unreadable images
    if accelerator.is_main_process:
        if skipped:
            logger.warning("Skipped %d unreadable images: %s", len(skipped), ", ".join(skipped))
        results = {**metrics, "train_steps": state["step"], "train_images_seen": state["images_seen"],
                   "train_runtime_s": round(state["train_time"], 1), "best_AP": state["best_AP"],
                   "learning_curve": state["learning_curve"], "skipped_samples": len(skipped),
                   "skipped_images": skipped}
        (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
        print(format_metrics_table(metrics))
        sample = save_sample_prediction(DeTRLiteForObjectDetection.from_pretrained(output_dir / "best").to(
            accelerator.device), processor, val, output_dir)
        print(f"\nBest model (AP {state['best_AP']:.4f}): {output_dir / 'best'}\n"
              f"Metrics: {output_dir / 'all_results.json'}\nCheckpoints: {output_dir / 'checkpoints'}\n"
              f"Sample prediction: {sample}\nData: {args.data_dir}")
        if args.push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            # best/ already holds everything the Hub repo needs: weights, code, processor, model card as README.
            create_repo(args.hub_model_id, exist_ok=True)
            upload_folder(folder_path=str(output_dir / "best"), repo_id=args.hub_model_id)
            print(f"Pushed to https://huggingface.co/{args.hub_model_id}")
    if args.with_tracking:
        accelerator.end_training()
    return metrics


if __name__ == "__main__":
    try:
        main()
    except CheckpointError as error:  # a full disk, an unsafe checkpoint: the message says what to do
        raise SystemExit(str(error)) from error
    except BadImageError as error:  # --on_bad_sample error, or an image over --max_image_pixels
        raise SystemExit(str(error)) from error
