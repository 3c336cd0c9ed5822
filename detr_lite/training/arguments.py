"""`TrainingArguments`: every setting of a training run, with DETR's recipe as defaults, validated once.

The recipe fields (`RECIPE_FIELDS`) are what a preset's "training" section may set; `run_detection.py`'s flags
have the same names.
"""

import dataclasses
from dataclasses import dataclass

from PIL import Image


@dataclass
class TrainingArguments:
    """Settings of one training run; any field can be given to `detr_lite.training.train`.

    Errors name the field as its command-line flag (`--learning_rate`), the same name in both places.
    """

    # Data
    data_dir: str | None = None  # COCO, VOC or Hugging Face folder; None: the built-in synthetic set
    dataset_name: str | None = None  # a Hub dataset for datasets.load_dataset, instead of data_dir
    dataset_config: str | None = None  # the Hub dataset's configuration name
    train_split: str = "train"
    val_split: str = "val"
    synthetic_dir: str = "data/synthetic"  # where the synthetic set is generated (and cached)
    synthetic_num_train: int = 2000
    synthetic_num_val: int = 200
    synthetic_seed: int = 0
    max_train_samples: int | None = None  # keep only the first N training images
    max_eval_samples: int | None = None
    on_bad_sample: str = "skip"  # an unreadable image: "skip" it with a warning, or "error"
    max_image_pixels: int = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb guard; 0: no limit
    # Output
    output_dir: str = "out"
    model_name_or_path: str | None = None  # start from a saved DeTR-Lite model instead of a fresh config
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or "latest"
    # Recipe (DETR's values): what a preset's "training" section sets
    learning_rate: float = 1e-4
    backbone_learning_rate: float = 1e-5  # DETR trains the pretrained backbone 10x slower
    weight_decay: float = 1e-4
    max_grad_norm: float = 0.1  # DETR clips at 0.1; 0 turns clipping off
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    num_train_epochs: int = 50
    max_train_steps: int | None = None  # overrides num_train_epochs
    max_train_time: float | None = None  # minutes of training; the step count is fitted to it (overrides both)
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "step"  # constant, step (x0.1 at lr_drop_epochs) or cosine
    num_warmup_steps: int = 0
    lr_drop_epochs: int | None = None  # step scheduler: the epoch of the drop; None: never
    ema_decay: float = 0.0  # exponential moving average of the weights for evaluation; 0: off
    augmentation: str = "detr"  # detr: flip + multi-scale + crop; flip: flip only
    eval_every: str | int = "epoch"  # "epoch", or a number of steps
    checkpointing_steps: str | int = "epoch"  # "epoch", or a number of steps
    checkpoints_total_limit: int = 2  # keep the newest N checkpoints
    dataloader_num_workers: int = 2
    cache_images: str = "auto"  # decode training images once into memory at the canvas size: auto (<= 4 GiB), yes, no
    seed: int = 42
    logging_steps: int = 10
    mixed_precision: str | None = None  # no, fp16, bf16, auto (bf16 where native); None: what accelerate launch says
    # Run
    max_consecutive_nonfinite: int = 5  # stop when this many steps in a row have a NaN/inf loss
    torch_compile: bool = False
    torch_compile_backend: str = "inductor"
    with_tracking: bool = False  # log to the trackers named in report_to
    report_to: str = "tensorboard"  # comma-separated Accelerate tracker names
    push_to_hub: bool = False
    hub_model_id: str | None = None
    command: str | None = None  # the command line that started the run, for the model card

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        def fail(field: str, message: str) -> None:
            raise ValueError(f"--{field} {message}")

        for field in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                      "logging_steps", "max_consecutive_nonfinite", "num_train_epochs"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                fail(field, f"must be at least 1, got {getattr(self, field)!r}.")
        if self.max_image_pixels < 0:
            fail("max_image_pixels", f"must be 0 (no limit) or positive, got {self.max_image_pixels}.")
        if not 0.0 <= self.ema_decay < 1.0:
            fail("ema_decay", f"must be in [0, 1) (0 = off), got {self.ema_decay}.")
        choices = {"on_bad_sample": ("skip", "error"), "lr_scheduler_type": ("constant", "step", "cosine"),
                   "augmentation": ("detr", "flip"), "mixed_precision": (None, "no", "fp16", "bf16", "auto"),
                   "cache_images": ("auto", "yes", "no")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                fail(field, f"must be one of {allowed}, got {getattr(self, field)!r}.")
        if self.max_train_time is not None and not self.max_train_time > 0:
            fail("max_train_time", f"must be a positive number of minutes, got {self.max_train_time!r}.")
        if self.data_dir is not None and self.dataset_name is not None:
            fail("dataset_name", "and --data_dir both name a dataset; give one of them.")
        step_interval(self.eval_every, "eval_every")  # parsed now, so a typo fails before training
        step_interval(self.checkpointing_steps, "checkpointing_steps")

    @property
    def eval_interval(self) -> int | None:
        """Steps between evaluations; None: at the end of every epoch."""
        return step_interval(self.eval_every, "eval_every")

    @property
    def checkpoint_interval(self) -> int | None:
        """Steps between checkpoints; None: at the end of every epoch."""
        return step_interval(self.checkpointing_steps, "checkpointing_steps")

    @property
    def uses_synthetic_data(self) -> bool:
        return self.data_dir is None and self.dataset_name is None


_NAMES = [f.name for f in dataclasses.fields(TrainingArguments)]
# The fields from learning_rate to mixed_precision, in their declared order.
RECIPE_FIELDS = tuple(_NAMES[_NAMES.index("learning_rate"): _NAMES.index("mixed_precision") + 1])


def step_interval(value: str | int, name: str) -> int | None:
    """'epoch' -> None (once per epoch), else a positive number of steps.

    Raises:
        ValueError: neither 'epoch' nor a positive integer, naming `--{name}`.
    """
    if str(value) == "epoch":
        return None
    try:
        steps = int(value)
    except ValueError:
        raise ValueError(f"--{name} must be 'epoch' or a number of steps, got {value!r}.") from None
    if steps < 1:
        raise ValueError(f"--{name} must be at least 1, got {steps}.")
    return steps
