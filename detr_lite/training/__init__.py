"""Training DeTR-Lite: the loop and everything only training needs (presets, policies, checkpoints, the
optimisation recipe, the model card). Nothing here is copied next to a saved model.

    from detr_lite import DeTRLiteConfig
    from detr_lite.training import TrainingArguments, train

    metrics = train(TrainingArguments(data_dir="data/coco", output_dir="out"), DeTRLiteConfig())
"""

from .arguments import TrainingArguments
from .loop import Trainer, train
from .policies import TrainingError, TrainingInterrupted
from .state import TrainingState

__all__ = ["Trainer", "TrainingArguments", "TrainingError", "TrainingInterrupted", "TrainingState", "train"]
