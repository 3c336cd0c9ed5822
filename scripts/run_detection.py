"""Train and evaluate a DeTR-Lite detector with Accelerate.

    python scripts/run_detection.py            # built-in synthetic shapes, quickstart preset, CPU-friendly
    accelerate launch scripts/run_detection.py --config configuration/detr_lite_r50.json \\
        --data_dir data/coco --train_split train2017 --val_split val2017 --output_dir out

A preset (`--config`) gives the model ("model") and the recipe ("training", "data"); any flag overrides it.
"""

import argparse
import shlex
import sys
from pathlib import Path

from PIL import Image

from detr_lite import DeTRLiteConfig
from detr_lite.data import BadImageError
from detr_lite.training import TrainingArguments, TrainingError, TrainingInterrupted, train
from detr_lite.training.arguments import RECIPE_FIELDS
from detr_lite.training.checkpointing import CheckpointError
from detr_lite.training.components import resolve_mixed_precision
from detr_lite.training.presets import Preset, read_preset
from detr_lite.training.saving import check_hub_access

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configuration" / "detr_lite_quickstart.json"
R50 = REPO / "configuration" / "detr_lite_r50.json"
# A preset's "data" section → TrainingArguments' synthetic-set fields.
DATA_SECTION = {"synthetic_dir": "synthetic_dir", "num_train": "synthetic_num_train", "num_val": "synthetic_num_val",
                "seed": "synthetic_seed"}
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--config", help="preset JSON (default: quickstart without --data_dir, else detr_lite_r50)")
    add("--data_dir", help="dataset folder (COCO, VOC or Hugging Face layout); default: built-in synthetic set")
    add("--dataset_name", help="a Hugging Face Hub dataset (datasets.load_dataset), instead of --data_dir")
    add("--dataset_config", help="the --dataset_name configuration")
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
    add("--max_train_time", type=float, help="minutes of training (evaluation not counted): the number of steps, "
        "and so the learning-rate schedule, is fitted to it from this machine's measured step times; overrides "
        "--max_train_steps and --num_train_epochs")
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
        help="decode the training images once and keep them in memory at the canvas size (the processor's input "
             "size); auto: when that takes at most 4 GiB")
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


def training_arguments(args: argparse.Namespace, preset: Preset, command: str) -> TrainingArguments:
    """Flags over the preset's "training" and "data" sections over `TrainingArguments`' defaults."""
    given = {key: value for key, value in vars(args).items() if value is not None and key != "config"}
    recipe = {key: preset.training[key] for key in RECIPE_FIELDS if key in preset.training and key not in given}
    if {"max_train_steps", "num_train_epochs"} & set(given):
        recipe.pop("max_train_time", None)  # a length given on the command line beats the preset's time budget
    data = {DATA_SECTION[key]: value for key, value in preset.data.items()}
    values = {"output_dir": "out/quickstart" if uses_synthetic_data(args) else "out", **data, **recipe, **given,
              "command": command}
    values["mixed_precision"] = resolve_mixed_precision(values.get("mixed_precision"),
                                                        args.mixed_precision is not None)
    return TrainingArguments(**values)


def uses_synthetic_data(args: argparse.Namespace) -> bool:
    """No dataset named: the built-in synthetic set and the quickstart preset."""
    return args.data_dir is None and args.dataset_name is None


def model_config(preset: Preset) -> DeTRLiteConfig:
    try:
        return DeTRLiteConfig(**preset.model)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--config {preset.path}: invalid model settings: {error}") from error


def main(argv: list[str] | None = None) -> dict:
    """Parse the flags, resolve the preset, train; a failure exits with its message (and status)."""
    args = parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    try:
        preset = read_preset(args.config or (QUICKSTART if uses_synthetic_data(args) else R50))
        training_args = training_arguments(args, preset, command)
        config = None if args.model_name_or_path else model_config(preset)
        check_hub_access(args.push_to_hub, args.hub_model_id)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    try:
        return train(training_args, config)
    except TrainingInterrupted as interrupted:
        raise SystemExit(interrupted.exit_code) from interrupted
    except TrainingError as error:
        raise SystemExit(str(error)) from error


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, BadImageError) as error:  # a full disk, an unsafe checkpoint, an unreadable image
        raise SystemExit(str(error)) from error
