"""Contrastive denoising queries, for training only: DN-DETR (Li et al. 2022) with DINO's negatives (Zhang et al. 2023).

Beside the matched queries, the decoder gets noised copies of each image's targets. A positive copy has each box
corner moved by less than `denoising_box_noise` times half the box's width (or height) and is trained to give
back the target's class and box; a negative copy is moved by one to two times that and is trained to "no object".
Each query's target is known, so nothing is matched: the positives teach the decoder to correct a box near an
object, the negatives to reject a second, worse box on an object that already has a good one (the duplicates a
short DETR schedule draws). A query's content is an embedding of its target's class (a random class with
probability `denoising_label_flip`), its position the embedding of its box (`box_query_position`).

Every group holds a positive for each target of the image and fills its remaining slots (twice the batch's largest
target count) with negatives, so all images share one shape without padding; an image without targets gets
random boxes, all negatives. Groups are stacked along the batch, so that no query sees another group's or the
matched queries' boxes.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .box_ops import center_to_corners, corners_to_center
from .configuration_detr_lite import DeTRLiteConfig
from .loss_detr_lite import Matching


@dataclass
class DenoisingGroups:
    """The denoising queries of a batch of B images: G groups of S slots each.

    Attributes:
        content: (G * B, S, D) class embeddings, group-major along the batch (row g * B + b).
        reference_boxes: (G * B, S, 4) noised boxes, normalised (cx, cy, w, h).
        groups: G.
        image, query, target: (M,) each positive's image, its query index among the image's G * S queries
            (group-major, see `per_image`) and its index among the image's targets repeated G times.
    """

    content: torch.Tensor
    reference_boxes: torch.Tensor
    groups: int
    image: torch.Tensor
    query: torch.Tensor
    target: torch.Tensor

    def per_image(self, values: torch.Tensor) -> torch.Tensor:
        """(..., G * B, S, F) as decoded -> (..., B, G * S, F): each image's queries of every group."""
        grouped = values.unflatten(-3, (self.groups, values.shape[-3] // self.groups))  # (..., G, B, S, F)
        return grouped.transpose(-4, -3).flatten(-3, -2)

    def matching(self, num_layers: int) -> Matching:
        """The positives as the loss's matched pairs, the same in each of `num_layers` decoder layers."""
        return Matching(self.image, self.query.expand(num_layers, -1), self.target.expand(num_layers, -1))


class DenoisingQueries(nn.Module):
    """Builds the noised target queries of a batch (see the module docstring)."""

    def __init__(self, config: DeTRLiteConfig):
        super().__init__()
        self.groups = config.denoising_groups
        self.box_noise = config.denoising_box_noise
        self.label_flip = config.denoising_label_flip
        self.label_embedding = nn.Embedding(config.num_labels, config.d_model)

    def forward(self, labels: Sequence[Mapping[str, torch.Tensor]]) -> DenoisingGroups | None:
        """Noised queries for B label dicts (`class_labels` (n,), `boxes` (n, 4) cxcywh); None without targets."""
        counts = [len(target["boxes"]) for target in labels]
        slots = 2 * max(counts, default=0)
        if slots == 0:
            return None
        device = self.label_embedding.weight.device
        classes, boxes = zip(*(self._image_slots(target, slots, device) for target in labels))
        classes, boxes = torch.stack(classes, 1), torch.stack(boxes, 1)  # (G, B, S), (G, B, S, 4)
        flip = torch.rand(classes.shape, device=device) < self.label_flip
        shown = torch.where(flip, torch.randint_like(classes, self.label_embedding.num_embeddings), classes)
        image, query, target = self._positive_pairs(counts, slots)
        return DenoisingGroups(self.label_embedding(shown).flatten(0, 1), boxes.flatten(0, 1), self.groups,
                               image, query, target)

    def _image_slots(self, target: Mapping[str, torch.Tensor], slots: int,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's (G, S) classes and (G, S, 4) noised boxes: a positive per target, then negatives."""
        count = len(target["boxes"])
        shape = (self.groups, slots)
        if count == 0:  # nothing to copy: random boxes, all background
            centres, sides = torch.rand(*shape, 2, device=device), torch.rand(*shape, 2, device=device) * 0.45 + 0.05
            classes = torch.randint(self.label_embedding.num_embeddings, shape, device=device)
            return classes, torch.cat([centres, sides], -1)
        source = torch.arange(slots, device=device) % count  # targets 0..n-1, then again for the negatives
        boxes = target["boxes"].to(device, torch.float32)[source].expand(*shape, 4)
        negative = (torch.arange(slots, device=device) >= count).float()[:, None]  # (S, 1)
        classes = target["class_labels"].to(device, torch.int64)[source].expand(shape)
        return classes, jitter_boxes(boxes, negative, self.box_noise)

    def _positive_pairs(self, counts: list[int], slots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image, query, target) of every positive: target j of image b is slot j of each group g, paired with
        copy g of the targets repeated G times (the loss's `copies`, which also weighs each group as one set)."""
        pairs = [(image, group * slots + target, group * count + target) for image, count in enumerate(counts)
                 for group in range(self.groups) for target in range(count)]  # some image has targets
        return tuple(torch.tensor(column, dtype=torch.int64) for column in zip(*pairs))


def jitter_boxes(boxes: torch.Tensor, low: torch.Tensor, scale: float) -> torch.Tensor:
    """Moves each corner of (..., 4) cxcywh boxes by (low + U[0, 1)) * scale * half the box's side, each in a
    random direction, and keeps a valid box inside the image. `low` 0 gives DINO's positives, 1 its negatives.
    """
    corners = center_to_corners(boxes)
    half_sides = torch.cat([boxes[..., 2:], boxes[..., 2:]], -1) / 2  # (w, h, w, h) / 2
    magnitude = (low + torch.rand_like(corners)) * scale
    sign = torch.where(torch.rand_like(corners) < 0.5, -1.0, 1.0)
    moved = (corners + sign * magnitude * half_sides).clamp(0, 1)
    x0, x1 = moved[..., 0::2].min(-1).values, moved[..., 0::2].max(-1).values
    y0, y1 = moved[..., 1::2].min(-1).values, moved[..., 1::2].max(-1).values
    return corners_to_center(torch.stack([x0, y0, x1, y1], -1))
