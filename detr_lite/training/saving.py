"""What a run leaves behind besides checkpoints: the best model (`best/`, with its image processor and model
card), `all_results.json`, an annotated sample prediction, and the upload to the Hub."""

import json
import logging
from pathlib import Path

import torch

from ..data import DetectionDataset, SkipBadImages
from ..image_processing_detr_lite import DeTRLiteImageProcessor
from .checkpointing import write_atomically
from .model_card import write_model_card

logger = logging.getLogger(__name__)


def save_model(folder: Path, model, processor: DeTRLiteImageProcessor, metrics: dict, info: dict) -> None:
    """save_pretrained (safetensors + code) + processor + model card, swapped into place when complete."""
    model.config.use_pretrained_backbone = False  # the checkpoint carries the backbone weights
    hint = ("The checkpoints are not affected: free disk space, then continue with --resume_from_checkpoint "
            "latest.")
    with write_atomically(folder, hint) as partial:
        model.save_pretrained(partial)
        processor.save_pretrained(partial)
        write_model_card(partial, model.config, metrics, info)
        (partial / "eval_results.json").write_text(json.dumps(metrics, indent=2))


def save_sample_prediction(model, processor: DeTRLiteImageProcessor, val: DetectionDataset,
                           output_dir: Path) -> Path | None:
    """An annotated prediction on the first validation image, so a user sees what the model does: the
    detections scoring above 0.5, or the 3 best when none does."""
    from ..visualization import draw_detections

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


def push_to_hub(folder: Path, repo_id: str) -> None:
    """Upload `folder` (weights, code, processor, model card as README) as the Hub repository `repo_id`."""
    from huggingface_hub import create_repo, upload_folder

    create_repo(repo_id, exist_ok=True)
    upload_folder(folder_path=str(folder), repo_id=repo_id)
    print(f"Pushed to https://huggingface.co/{repo_id}")


def check_hub_access(push: bool, hub_model_id: str | None) -> None:
    """With --push_to_hub, fail now, not after hours of training, if the Hub cannot be reached.

    Raises:
        ValueError: no repository named, offline, or the Hub unreachable or not logged in.
    """
    if not push:
        return
    from huggingface_hub import HfApi, constants

    if not hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. me/detr-lite-shapes).")
    if constants.is_offline_mode():
        raise ValueError("--push_to_hub: HF_HUB_OFFLINE is set, so the model cannot be uploaded. Unset it or drop "
                         "--push_to_hub and upload later with model.push_to_hub().")
    try:
        HfApi().whoami()
    except Exception as error:  # network down, no token, DNS failure: all mean "cannot push"
        raise ValueError(f"--push_to_hub: the Hugging Face Hub is not reachable or you are not logged in ({error}). "
                         "Run `huggingface-cli login` where there is network, or drop --push_to_hub.") from error
