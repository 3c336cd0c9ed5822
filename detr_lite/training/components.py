"""What a training run is built from, given its `TrainingArguments`: the Accelerator (with its trackers), the
output folder, the datasets and the model."""

import importlib
import logging
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, LoggerType

from ..configuration_detr_lite import DeTRLiteConfig
from ..data import DEFAULT_MEMORY_LIMIT, DecodedImageCache, DetectionDataset, cached_size, load_detection_dataset
from ..data.hf import read_hub_dataset
from ..data.synthetic import make_synthetic_dataset
from ..modeling_detr_lite import DeTRLiteForObjectDetection
from .arguments import TrainingArguments
from .policies import TrainingError

logger = logging.getLogger(__name__)


def native_bf16() -> bool:
    """Whether the device training will run on computes bf16 in hardware."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    # torch exposes these CPU feature probes only as private functions; if they go away, assume no support.
    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


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


def check_trackers(report_to: str) -> list[str]:
    """The tracker names of `--report_to`, each one able to run.

    Accelerate only warns about a tracker whose package is missing and then logs nothing, so this stops first.

    Raises:
        TrainingError: an unknown tracker, or one whose package is not installed (saying what to install).
    """
    names = [name.strip() for name in report_to.split(",") if name.strip()]
    valid = [tracker.value for tracker in LoggerType]
    for name in names:
        if name not in valid:
            raise TrainingError(f"--report_to {name}: not an Accelerate tracker; use one of {', '.join(valid)}.")
        available = getattr(importlib.import_module("accelerate.utils"), f"is_{name}_available", None)
        if available is not None and not available():
            raise TrainingError(f"--report_to {name}: the {name} package is not installed, so nothing would be "
                                f"logged. Install it (pip install {name}) or drop --with_tracking.")
    return names


def make_accelerator(args: TrainingArguments) -> Accelerator:
    """The Accelerator for `args`, with logging set up and the trackers checked (not yet started)."""
    trackers = check_trackers(args.report_to) if args.with_tracking else None
    accelerator = Accelerator(
        # Accelerate's multi-process launcher (torchrun) only forms a CPU process group (gloo) when told it is on
        # CPU; without CUDA there is nothing else to run on.
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=resolve_mixed_precision(args.mixed_precision, flag_given=True),
        dynamo_backend=args.torch_compile_backend if args.torch_compile else None,
        log_with=trackers,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
                        if accelerator.is_main_process else logging.ERROR)
    return accelerator


def prepare_output_dir(output_dir: Path) -> None:
    """Create `output_dir`, or stop before training if it cannot be created or written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrainingError(f"--output_dir {output_dir} cannot be created: {error}") from error
    if not os.access(output_dir, os.W_OK):
        raise TrainingError(f"--output_dir {output_dir} is not writable.")


def load_splits(args: TrainingArguments) -> tuple[DetectionDataset, DetectionDataset]:
    """The training and validation splits, cut to `max_*_samples`; generates the synthetic set when no data is
    named (and sets `args.data_dir` to it)."""
    if args.uses_synthetic_data:
        args.data_dir = str(make_synthetic_dataset(args.synthetic_dir, num_train=args.synthetic_num_train,
                                                   num_val=args.synthetic_num_val, seed=args.synthetic_seed,
                                                   progress=True))
    try:
        train, val = (_read_split(args, split) for split in (args.train_split, args.val_split))
    except ValueError as error:
        raise TrainingError(str(error)) from error
    source = args.data_dir or args.dataset_name
    if train.id2label != val.id2label:
        raise TrainingError(f"{source}: splits {args.train_split!r} and {args.val_split!r} have different "
                            f"classes ({train.id2label} vs {val.id2label}).")
    train.records = train.records[: args.max_train_samples or None]
    val.records = val.records[: args.max_eval_samples or None]
    for split, dataset in ((args.train_split, train), (args.val_split, val)):
        if not len(dataset):
            raise TrainingError(f"{source}: split {split!r} has no images; there is nothing to "
                                f"{'train' if dataset is train else 'evaluate'} on. Check the split's annotations.")
    return train, val


def training_images(train: DetectionDataset, args: TrainingArguments, image_size: int,
                    accelerator: Accelerator) -> DetectionDataset | DecodedImageCache:
    """The training split, decoded once into memory at the canvas size when `args.cache_images` allows it."""
    if args.cache_images == "no" or (args.cache_images == "auto"
                                      and cached_size(train, image_size) > DEFAULT_MEMORY_LIMIT):
        return train
    workers = max(1, (os.cpu_count() or 1) // accelerator.num_processes)
    return DecodedImageCache(train, image_size, num_workers=workers, show_progress=accelerator.is_local_main_process)


def _read_split(args: TrainingArguments, split: str) -> DetectionDataset:
    if args.dataset_name is not None:
        return read_hub_dataset(args.dataset_name, args.dataset_config, split)
    return load_detection_dataset(args.data_dir, split)


def build_model(args: TrainingArguments, config: DeTRLiteConfig | None,
                id2label: dict[int, str]) -> DeTRLiteForObjectDetection:
    """A fresh model from `config` (default: DETR-R50), or `args.model_name_or_path`, with the dataset's classes.

    A loaded model whose classes differ gets a new class head (`ignore_mismatched_sizes`).
    """
    label2id = {name: index for index, name in id2label.items()}
    if args.model_name_or_path:
        return DeTRLiteForObjectDetection.from_pretrained(args.model_name_or_path, id2label=id2label,
                                                          label2id=label2id, ignore_mismatched_sizes=True)
    settings = (config or DeTRLiteConfig()).to_dict()
    config = DeTRLiteConfig.from_dict({**settings, "id2label": id2label, "label2id": label2id})
    if config.freeze_batch_norm and not config.use_pretrained_backbone:
        logger.warning("freeze_batch_norm with a randomly initialised backbone: the frozen statistics are "
                       "meaningless. Set freeze_batch_norm=false when training the backbone from scratch.")
    return DeTRLiteForObjectDetection(config)
