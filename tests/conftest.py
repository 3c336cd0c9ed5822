"""Shared test setup: no network, a tiny model configuration, deterministic seeds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_MODEL = dict(
    backbone="resnet18",
    d_model=32,
    encoder_layers=2,
    decoder_layers=3,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    num_queries=6,
    image_size=128,
    id2label={0: "circle", 1: "square", 2: "triangle"},
)


def tiny_config(**overrides):
    """The model tester's config: hidden 32, a few layers and queries, 128-pixel images."""
    from detr_lite import DeTRLiteConfig

    return DeTRLiteConfig(**{**TINY_MODEL, **overrides})


def random_labels(batch: int, num_labels: int = 3, max_boxes: int = 4, generator: torch.Generator | None = None):
    """B label dicts in DETR's convention: (cx, cy, w, h) normalised, class ids in 0..num_labels-1."""
    labels = []
    for index in range(batch):
        n = int(torch.randint(0, max_boxes + 1, (1,), generator=generator)) if index else max_boxes
        centers = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
        labels.append({
            "class_labels": torch.randint(0, num_labels, (n,), generator=generator),
            "boxes": torch.cat([centers, sizes], dim=1),
        })
    return labels


def labels_with_counts(seed: int, counts: list[int], num_classes: int) -> list[dict[str, torch.Tensor]]:
    """One label dict per entry of `counts`, with that many random boxes inside the image."""
    generator = torch.Generator().manual_seed(1000 + seed)
    return [
        {
            "class_labels": torch.randint(0, num_classes, (n,), generator=generator),
            "boxes": torch.cat([0.2 + 0.6 * torch.rand(n, 2, generator=generator),
                                0.05 + 0.35 * torch.rand(n, 2, generator=generator)], dim=-1),
        }
        for n in counts
    ]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random DeTR-Lite model and its processor, saved as training would save them."""
    from detr_lite import DeTRLiteForObjectDetection, DeTRLiteImageProcessor

    folder = tmp_path_factory.mktemp("detr_lite_tiny")
    torch.manual_seed(0)
    DeTRLiteForObjectDetection(tiny_config()).save_pretrained(folder)
    DeTRLiteImageProcessor(size=128).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_model():
    from detr_lite import DeTRLiteForObjectDetection

    torch.manual_seed(0)
    return DeTRLiteForObjectDetection(tiny_config()).eval()
