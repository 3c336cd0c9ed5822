"""Hungarian matcher and set criterion of DETR (Carion et al. 2020, "End-to-End Object Detection
with Transformers", Sec. 3.1), written afresh after the paper and facebookresearch/detr.

Each image's targets are matched one-to-one to the model's queries by the Hungarian algorithm on
a class + L1 + GIoU cost; unmatched queries are trained to predict "no object" (the last class).

Hub rule: copied into hub repos for `trust_remote_code`, so only torch, numpy and scipy here.
"""

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .box_ops import box_iou, box_iou_paired, center_to_corners, generalized_box_iou, paired_generalized_box_iou


class Matching(NamedTuple):
    """The matched (query, target) pairs of L decoder layers, all images together, int64 on the CPU.

    An image with n targets gets min(Q, n) pairs in every layer, so the layers share one layout: pairs
    grouped by image in batch order, sorted by query within an image.
    """

    image: Tensor  # (M,) the image of each pair, the same in every layer
    query: Tensor  # (L, M) query index within the image
    target: Tensor  # (L, M) index into the image's own targets

    def pairs(self, layer: int, image: int) -> tuple[Tensor, Tensor]:
        """(query_indices, target_indices) of one layer and image, sorted by query."""
        selected = self.image == image
        return self.query[layer, selected], self.target[layer, selected]


class NonFinitePredictionError(ValueError):
    """The model's logits or boxes contain NaN or inf: training diverged or the input was bad."""


def _check_label_structure(labels: Sequence[Mapping[str, Tensor]], batch_size: int) -> list[int]:
    """Check keys, dtypes and shapes of `labels` (metadata only, no device sync).

    Returns:
        The number of targets of each image.
    """
    if not isinstance(labels, Sequence) or len(labels) != batch_size:
        got = f"{len(labels)} items" if isinstance(labels, Sequence) else type(labels).__name__
        raise ValueError(f"labels must be a list of {batch_size} dicts, one per image, got {got}.")
    return [_check_image_labels(index, target) for index, target in enumerate(labels)]


def _describe(value) -> str:
    """'dtype (shape)' of a tensor, the type name of anything else, for error messages."""
    return f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


def _check_image_labels(index: int, target: Mapping[str, Tensor]) -> int:
    """Check the label dict of image `index`; returns its number of targets."""
    missing = sorted({"class_labels", "boxes"} - set(target)) if isinstance(target, Mapping) else ["(not a dict)"]
    if missing:
        raise ValueError(f"labels[{index}] lacks {missing}: each image needs 'class_labels', a LongTensor (n,), "
                         "and 'boxes', a FloatTensor (n, 4) of normalised (cx, cy, w, h); n may be 0.")
    classes, boxes = target["class_labels"], target["boxes"]
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
        raise ValueError(f"labels[{index}]['boxes'] must be a float tensor of shape (n, 4), got {_describe(boxes)}.")
    if (not isinstance(classes, Tensor) or classes.shape != (len(boxes),) or classes.is_floating_point()
            or classes.dtype == torch.bool):
        raise ValueError(f"labels[{index}]['class_labels'] must be an integer tensor of shape ({len(boxes)},), one "
                         f"id per box, got {_describe(classes)}.")
    return len(boxes)


def _check_label_values(classes: np.ndarray, boxes: np.ndarray, counts: list[int], num_labels: int) -> None:
    """Check the host copy of the concatenated targets: classes (T,), boxes (T, 4) cxcywh."""
    problems = (
        ("class_labels", (classes < 0) | (classes >= num_labels), f"is outside 0..{num_labels - 1}; class ids must "
         "be contiguous, map dataset category ids through config.label2id"),
        ("boxes", ~np.isfinite(boxes).all(-1) | (boxes[:, 2:] < 0).any(-1), "is non-finite or has a negative "
         "width/height; boxes must be normalised (cx, cy, w, h)"),
    )
    for field, bad, reason in problems:
        if bad.any():
            position = int(np.argmax(bad))
            image = int(np.searchsorted(np.cumsum(counts), position, side="right"))
            row = position - sum(counts[:image])
            value = int(classes[position]) if field == "class_labels" else boxes[position].tolist()
            raise ValueError(f"labels[{image}]['{field}'][{row}] = {value} {reason}.")


def _concat_labels(labels: Sequence[Mapping[str, Tensor]], device: torch.device) -> tuple[Tensor, Tensor]:
    """The targets of the whole batch, concatenated: class ids (T,) int64 and boxes (T, 4) float32."""
    classes = torch.cat([target["class_labels"].reshape(-1) for target in labels]).to(device, torch.int64)
    boxes = torch.cat([target["boxes"].reshape(-1, 4) for target in labels]).to(device, torch.float32)
    return classes, boxes


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising the DETR matching cost.

    cost = class_cost * (-p[target class]) + bbox_cost * L1(boxes) + giou_cost * (-GIoU(boxes)).
    """

    def __init__(self, class_cost: float = 1.0, bbox_cost: float = 5.0, giou_cost: float = 2.0):
        super().__init__()
        if min(class_cost, bbox_cost, giou_cost) < 0 or class_cost == bbox_cost == giou_cost == 0:
            raise ValueError(f"Matcher costs must be non-negative and not all 0, got class_cost={class_cost}, "
                             f"bbox_cost={bbox_cost}, giou_cost={giou_cost}.")
        self.class_cost = class_cost
        self.bbox_cost = bbox_cost
        self.giou_cost = giou_cost

    @torch.no_grad()
    def forward(self, logits: Tensor, pred_boxes: Tensor, labels: Sequence[Mapping[str, Tensor]]) -> Matching:
        """Match every decoder layer of every image in one device-to-host transfer.

        Args:
            logits: (L, B, Q, C + 1) class logits of L decoder layers, the last class being no-object.
            pred_boxes: (L, B, Q, 4) predicted boxes, normalised (cx, cy, w, h).
            labels: B dicts, `class_labels` LongTensor (n,) and `boxes` FloatTensor (n, 4) normalised
                (cx, cy, w, h); n may be 0.

        Returns:
            The optimal pairs of every layer and image, min(Q, n) for an image with n targets.
        """
        if logits.ndim != 4 or pred_boxes.shape != (*logits.shape[:3], 4):
            raise ValueError(f"HungarianMatcher expects logits (L, B, Q, C + 1) and pred_boxes (L, B, Q, 4), got "
                             f"{tuple(logits.shape)} and {tuple(pred_boxes.shape)}.")
        num_labels = logits.shape[-1] - 1
        counts = _check_label_structure(labels, logits.shape[1])
        classes, boxes = _concat_labels(labels, logits.device)
        # Out-of-range ids are clamped only so that the gather cannot fault on the device;
        # they are reported from the host copy below.
        cost = self._cost(logits.float(), pred_boxes.float(), classes.clamp(0, num_labels - 1), boxes, counts)
        # The single device-to-host transfer of the call: costs of all layers and images, plus the
        # targets so that their values can be validated without a second sync.
        host = torch.cat([cost.flatten(), classes.float(), boxes.flatten()]).cpu().numpy()
        host_cost, host_classes, host_boxes = np.split(host, [cost.numel(), cost.numel() + len(classes)])
        _check_label_values(host_classes, host_boxes.reshape(-1, 4), counts, num_labels)
        if not np.isfinite(host_cost).all():
            raise NonFinitePredictionError(
                "HungarianMatcher: the model predicted non-finite (NaN or inf) logits or boxes (the targets are "
                "finite). Training has most likely diverged: lower the learning rate, check gradient clipping, or "
                "look for bad input images.")
        return self._assign(host_cost.reshape(cost.shape), counts)

    def _cost(self, logits: Tensor, pred_boxes: Tensor, classes: Tensor, boxes: Tensor, counts: list[int]) -> Tensor:
        """Cost between each image's own targets and its queries, padded to the largest count.

        logits (L, B, Q, C + 1), pred_boxes (L, B, Q, 4), classes (T,), boxes (T, 4) of all images concatenated
        -> (L, B, N, Q) with N = max(counts). Padding every image to N keeps the computation one batched tensor
        op while doing B times less work than pairing each query with the targets of the whole batch. Targets
        come first: scipy solves an (n, Q) problem with n <= Q without transposing it, and the broadcast
        products run along the long query axis.
        """
        padded_classes, padded_boxes = _pad_targets(classes, boxes, counts)  # (B, N), (B, N, 4)
        num_layers, batch, queries = logits.shape[:3]
        index = padded_classes[None, :, None, :].expand(num_layers, batch, queries, -1)  # (L, B, Q, N)
        # -p[class] rather than the NLL used by the loss: a probability is bounded like the box
        # costs, so the terms stay commensurable (DETR Sec. 3.1).
        class_cost = logits.softmax(-1).gather(-1, index).mT  # (L, B, N, Q), strided
        # Summed in place into one contiguous tensor: each (L, B, N, Q) term is allocated once (see box_ops on
        # the cost of large tensors).
        cost = torch.mul(class_cost, -self.class_cost, out=logits.new_empty(class_cost.shape))
        cost.add_(torch.cdist(padded_boxes.expand(num_layers, -1, -1, -1), pred_boxes, p=1), alpha=self.bbox_cost)
        giou = generalized_box_iou(center_to_corners(padded_boxes)[None], center_to_corners(pred_boxes))
        return cost.sub_(giou, alpha=self.giou_cost)

    @staticmethod
    def _assign(cost: np.ndarray, counts: list[int]) -> Matching:
        """Solve each (layer, image) problem on its unpadded part of the (L, B, N, Q) host cost."""
        num_layers, _, _, queries = cost.shape
        sizes = np.minimum(counts, queries)
        starts = np.cumsum(sizes) - sizes
        query = np.empty((num_layers, sizes.sum()), dtype=np.int64)
        target = np.empty_like(query)
        for layer, layer_cost in enumerate(cost):
            for image_cost, count, start, size in zip(layer_cost, counts, starts, sizes):
                pairs = slice(start, start + size)
                target[layer, pairs], query[layer, pairs] = linear_sum_assignment(image_cost[:count])
        # scipy lists the pairs by target; order them by query within each image (image-major keys).
        image = np.repeat(np.arange(len(counts)), sizes)
        order = np.argsort(image * queries + query, axis=1)
        return Matching(torch.from_numpy(image), torch.from_numpy(np.take_along_axis(query, order, 1)),
                        torch.from_numpy(np.take_along_axis(target, order, 1)))


def _pad_targets(classes: Tensor, boxes: Tensor, counts: list[int]) -> tuple[Tensor, Tensor]:
    """(T,), (T, 4) concatenated targets -> (B, N) classes and (B, N, 4) boxes, N = max(counts, 1).

    Padding boxes are a valid full-image box so that every cost stays finite; their columns are never read.
    """
    width = max(max(counts, default=0), 1)
    # (row, column) of every real target, row-major like the concatenation; built on the host, so no device sync.
    real = torch.arange(width) < torch.as_tensor(counts, dtype=torch.int64).reshape(-1, 1)  # (B, N)
    rows, cols = (index.to(classes.device) for index in real.nonzero(as_tuple=True))
    padded_classes = classes.new_zeros((len(counts), width))
    padded_boxes = boxes.new_tensor([0.5, 0.5, 1.0, 1.0]).repeat(len(counts), width, 1)
    padded_classes[rows, cols] = classes
    padded_boxes[rows, cols] = boxes
    return padded_classes, padded_boxes


class PredictionSet(NamedTuple):
    """Predictions trained beside the decoder's, under their own matching (e.g. the encoder's token proposals).

    `logits` (L, B, Q, C + 1) and `boxes` (L, B, Q, 4) hold L layers; their loss terms are logged with the
    suffix `_{name}` (last layer) or `_{name}_{i}`; each target is matched `copies` times, or, where each
    query's target is known beforehand (denoising queries), `matching` gives the pairs.
    """

    name: str
    logits: Tensor
    boxes: Tensor
    copies: int = 1
    matching: Matching | None = None


class _Targets(NamedTuple):
    """The targets of a batch on the device."""

    classes: Tensor  # (T,) int64, all images concatenated
    boxes: Tensor  # (T, 4) float32 cxcywh, all images concatenated
    counts: Tensor  # (B,) float32, number of targets of each image


class _Matches(NamedTuple):
    """The matched (query, target) pairs of one decoder layer, all images together, on the device."""

    image: Tensor  # (M,) image index of each pair
    query: Tensor  # (M,) query index within the image
    target: Tensor  # (M,) index into the concatenated targets


def _flatten_matches(matching: Matching, counts: list[int], device: torch.device) -> list[_Matches]:
    """Per-layer device index tensors of the matched pairs, targets indexed into the concatenation, in one copy."""
    offsets = torch.as_tensor(np.cumsum(counts) - counts, dtype=torch.int64)
    image = matching.image.expand_as(matching.query)
    # non_blocking: a copy from pageable memory is staged at once and does not wait for the queued device work.
    stacked = torch.stack([image, matching.query, matching.target + offsets[image]], dim=1)  # (L, 3, M)
    return [_Matches(*layer) for layer in stacked.to(device, non_blocking=True)]


OVERLAP_IOU = 0.5  # a query this close to a target that it was not matched to draws a second box on it


@torch.no_grad()
def _overlaps_a_target(boxes: Tensor, targets: _Targets) -> Tensor:
    """(B, Q) bool: the query's box (B, Q, 4 cxcywh) overlaps one of its own image's targets by IoU >= OVERLAP_IOU."""
    batch, queries = boxes.shape[:2]
    if len(targets.boxes) == 0:
        return torch.zeros(batch, queries, dtype=torch.bool, device=boxes.device)
    iou, _ = box_iou(center_to_corners(boxes.flatten(0, 1)), center_to_corners(targets.boxes))  # (B * Q, T)
    images = torch.arange(batch, device=boxes.device)
    target_image = images.repeat_interleave(targets.counts.long(), output_size=len(targets.boxes))  # no host sync
    same_image = images.repeat_interleave(queries)[:, None] == target_image
    return ((iou >= OVERLAP_IOU) & same_image).any(-1).view(batch, queries)


def _num_boxes(total: int, device: torch.device) -> Tensor:
    """Number of target boxes per process, averaged over processes and clamped to >= 1; 0-d, on the device."""
    # torch.full passes the count as a kernel argument: no host-to-device copy to wait for.
    num_boxes = torch.full((), float(total), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_boxes)
        num_boxes = num_boxes / dist.get_world_size()
    return num_boxes.clamp(min=1)


class DeTRLiteLoss(nn.Module):
    """The set criterion: Hungarian matching, then classification and box losses on every decoder layer.

    Args:
        config: any object with `num_labels`, `eos_coefficient`, the matcher costs `class_cost`,
            `bbox_cost`, `giou_cost`, the loss weights `bbox_loss_coefficient`, `giou_loss_coefficient`,
            `auxiliary_loss`, and optionally `auxiliary_matching_copies` (a `DeTRLiteConfig`, or transformers'
            `DetrConfig`).
    """

    def __init__(self, config):
        super().__init__()
        self.num_labels = config.num_labels
        self.eos_coefficient = config.eos_coefficient
        self.overlap_eos_coefficient = getattr(config, "overlap_eos_coefficient", None)  # not in DetrConfig
        self.iou_aware_classification = getattr(config, "iou_aware_classification", False)  # not in DetrConfig
        self.auxiliary_loss = config.auxiliary_loss
        # transformers' DetrConfig has no such field: one-to-one matching everywhere, as in DETR.
        self.auxiliary_matching_copies = getattr(config, "auxiliary_matching_copies", 1)
        self.matcher = HungarianMatcher(config.class_cost, config.bbox_cost, config.giou_cost)
        self.losses = ("labels", "boxes", "cardinality")
        # cardinality_error is logged only: it counts argmax predictions and has no gradient.
        self.weight_dict = {
            "loss_ce": 1.0,
            "loss_bbox": config.bbox_loss_coefficient,
            "loss_giou": config.giou_loss_coefficient,
            "cardinality_error": 0.0,
        }

    def forward(
        self,
        logits: Tensor,
        pred_boxes: Tensor,
        labels: Sequence[Mapping[str, Tensor]],
        aux_logits: Tensor | None = None,
        aux_boxes: Tensor | None = None,
        extra_sets: Sequence[PredictionSet] = (),
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the weighted DETR loss, in float32 even under autocast.

        Args:
            logits: (B, Q, num_labels + 1) class logits of the last decoder layer, no-object last.
            pred_boxes: (B, Q, 4) boxes of the last decoder layer, normalised (cx, cy, w, h).
            labels: B dicts, `class_labels` LongTensor (n,) and `boxes` FloatTensor (n, 4) normalised
                (cx, cy, w, h); n may be 0.
            aux_logits: (L - 1, B, Q, num_labels + 1) logits of the earlier decoder layers, or None.
                Ignored when `config.auxiliary_loss` is False.
            aux_boxes: (L - 1, B, Q, 4) boxes of the earlier decoder layers, or None.
            extra_sets: further predictions with their own matching, added to the loss (see `PredictionSet`).

        Returns:
            `(loss, loss_dict)`: the 0-d weighted total with its graph, and every term detached for
            logging: `loss_ce`, `loss_bbox`, `loss_giou`, `cardinality_error`, and for auxiliary
            layer i the same keys suffixed `_{i}`; then those of the extra sets.
        """
        with torch.autocast(device_type=logits.device.type, enabled=False):
            all_logits, all_boxes = self._stack_layers(logits, pred_boxes, aux_logits, aux_boxes)
            num_layers = len(all_logits)
            suffixes = [f"_{layer}" for layer in range(num_layers - 1)] + [""]
            total, loss_dict = 0.0, {}
            # The one-to-one final layer first: its matcher call validates the targets, naming their original rows.
            for layers, copies in self._matching_groups(num_layers):
                total = total + self._set_loss(all_logits[layers], all_boxes[layers], labels, copies,
                                               suffixes[layers], loss_dict)
            for extra in extra_sets:
                names = [f"_{extra.name}_{layer}" for layer in range(len(extra.logits) - 1)] + [f"_{extra.name}"]
                total = total + self._set_loss(extra.logits.float(), extra.boxes.float(), labels, extra.copies,
                                               names, loss_dict, extra.matching)
        return total, loss_dict

    def _set_loss(self, logits: Tensor, boxes: Tensor, labels: Sequence[Mapping[str, Tensor]], copies: int,
                  suffixes: Sequence[str], loss_dict: dict[str, Tensor], matching: Matching | None = None) -> Tensor:
        """Match layers (L, B, Q, ·) to the targets repeated `copies` times (or take the given `matching`);
        their weighted loss, terms logged."""
        if copies > 1:
            labels = [{"class_labels": target["class_labels"].repeat(copies), "boxes": target["boxes"].repeat(copies, 1)}
                      for target in labels]
        if matching is None:
            matching = self.matcher(logits, boxes, labels)
        counts = [len(target["boxes"]) for target in labels]
        targets = _Targets(*_concat_labels(labels, logits.device),
                           torch.tensor(counts, dtype=torch.float32).to(logits.device, non_blocking=True))
        num_boxes = _num_boxes(sum(counts), logits.device)
        total = 0.0
        for layer, (suffix, matches) in enumerate(zip(suffixes, _flatten_matches(matching, counts, logits.device))):
            terms = self._layer_losses(logits[layer], boxes[layer], targets, matches, num_boxes)
            total = total + sum(self.weight_dict[name] * value for name, value in terms.items())
            loss_dict.update({name + suffix: value.detach() for name, value in terms.items()})
        return total

    def _matching_groups(self, num_layers: int) -> list[tuple[slice, int]]:
        """The decoder layers matched together, and how many times each target is matched for them.

        DETR matches every layer one-to-one. With `auxiliary_matching_copies` k > 1 the auxiliary layers match
        each target k times instead (one-to-many, the "hybrid layers" of H-DETR, Jia et al. 2023): k queries
        learn from every object, which speeds up convergence, while the last layer, the one used for inference,
        stays one-to-one and so still needs no duplicate removal.
        """
        copies = self.auxiliary_matching_copies
        if copies == 1 or num_layers == 1:
            return [(slice(0, num_layers), 1)]
        return [(slice(num_layers - 1, num_layers), 1), (slice(0, num_layers - 1), copies)]

    def _stack_layers(
        self, logits: Tensor, pred_boxes: Tensor, aux_logits: Tensor | None, aux_boxes: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Check shapes and stack auxiliary + final layers in float32: (L, B, Q, C + 1) and (L, B, Q, 4)."""
        if logits.ndim != 3 or logits.shape[-1] != self.num_labels + 1:
            raise ValueError(f"logits must be (B, Q, num_labels + 1) = (B, Q, {self.num_labels + 1}) with "
                             f"no-object last, got {tuple(logits.shape)}.")
        if pred_boxes.shape != (*logits.shape[:2], 4):
            raise ValueError(f"pred_boxes must be (B, Q, 4) = {(*logits.shape[:2], 4)}, got {tuple(pred_boxes.shape)}.")
        if not self.auxiliary_loss or (aux_logits is None and aux_boxes is None):
            return logits.float()[None], pred_boxes.float()[None]
        if aux_logits is None or aux_boxes is None:
            raise ValueError("aux_logits and aux_boxes must be given together (or both left None).")
        if aux_logits.shape[1:] != logits.shape or aux_boxes.shape != (len(aux_logits), *pred_boxes.shape):
            raise ValueError(f"aux_logits and aux_boxes must be (L - 1, *{tuple(logits.shape)}) and "
                             f"(L - 1, *{tuple(pred_boxes.shape)}), got {tuple(aux_logits.shape)} and "
                             f"{tuple(aux_boxes.shape)}.")
        return (torch.cat([aux_logits.float(), logits.float()[None]]),
                torch.cat([aux_boxes.float(), pred_boxes.float()[None]]))

    def _layer_losses(self, logits: Tensor, boxes: Tensor, targets: _Targets, matches: _Matches,
                      num_boxes: Tensor) -> dict[str, Tensor]:
        """All loss terms of one decoder layer: logits (B, Q, C + 1), boxes (B, Q, 4)."""
        terms = {}
        for name in self.losses:
            terms.update(self.get_loss(name, logits, boxes, targets, matches, num_boxes))
        return terms

    def get_loss(self, name: str, *args) -> dict[str, Tensor]:
        """Dispatch to the loss term `name`; each returns a dict of 0-d tensors."""
        terms = {"labels": self.loss_labels, "boxes": self.loss_boxes, "cardinality": self.loss_cardinality}
        return terms[name](*args)

    def loss_labels(self, logits: Tensor, boxes: Tensor, targets: _Targets, matches: _Matches,
                    num_boxes: Tensor) -> dict[str, Tensor]:
        """Cross-entropy over all B x Q queries; unmatched ones target no-object.

        The no-object class is down-weighted by `eos_coefficient`: most queries are empty and would
        otherwise swamp the classification of the few real objects.
        """
        target_classes = torch.full(logits.shape[:2], self.num_labels, dtype=torch.int64, device=logits.device)
        target_classes[matches.image, matches.query] = targets.classes[matches.target]  # (B, Q)
        weight = torch.ones(self.num_labels + 1, device=logits.device)
        weight[-1] = self.eos_coefficient
        if self.overlap_eos_coefficient is None and not self.iou_aware_classification:
            return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, weight=weight)}
        # Per query: the mean is weighted as cross_entropy's own (sum of weighted losses over the sum of weights),
        # so with neither option it reduces to the line above.
        query_weight = weight[target_classes]  # (B, Q)
        if self.overlap_eos_coefficient is not None:  # an unmatched query on an object gets its own no-object weight
            duplicate = (target_classes == self.num_labels) & _overlaps_a_target(boxes, targets)
            query_weight = query_weight.masked_fill(duplicate, self.overlap_eos_coefficient)
        if not self.iou_aware_classification:
            losses = F.cross_entropy(logits.transpose(1, 2), target_classes, reduction="none")  # (B, Q)
            return {"loss_ce": (losses * query_weight).sum() / query_weight.sum()}
        # A matched query's target is split between its class (the IoU of its box with the target) and no-object
        # (the rest): its score then says how well its box fits, and the better of two boxes on an object ranks first.
        target = F.one_hot(target_classes, self.num_labels + 1).to(logits.dtype)  # (B, Q, C + 1)
        matched = boxes[matches.image, matches.query].detach()
        iou = box_iou_paired(center_to_corners(matched), center_to_corners(targets.boxes[matches.target]))
        target[matches.image, matches.query] *= iou[:, None]
        target[matches.image, matches.query, -1] = 1 - iou
        losses = -(target * logits.log_softmax(-1)).sum(-1)  # (B, Q)
        return {"loss_ce": (losses * query_weight).sum() / query_weight.sum()}

    def loss_boxes(self, logits: Tensor, boxes: Tensor, targets: _Targets, matches: _Matches,
                   num_boxes: Tensor) -> dict[str, Tensor]:
        """L1 and 1 - GIoU over the matched pairs, summed and divided by the number of target boxes."""
        matched = boxes[matches.image, matches.query]  # (M, 4)
        target = targets.boxes[matches.target]  # (M, 4)
        giou = paired_generalized_box_iou(center_to_corners(matched), center_to_corners(target))
        return {
            "loss_bbox": F.l1_loss(matched, target, reduction="sum") / num_boxes,
            "loss_giou": (1 - giou).sum() / num_boxes,
        }

    @torch.no_grad()
    def loss_cardinality(self, logits: Tensor, boxes: Tensor, targets: _Targets, matches: _Matches,
                         num_boxes: Tensor) -> dict[str, Tensor]:
        """Mean absolute error between the number of queries not predicting no-object and of targets.

        A log of over/under-detection only: argmax has no gradient.
        """
        predicted = (logits.argmax(-1) != self.num_labels).sum(1).float()  # (B,)
        return {"cardinality_error": F.l1_loss(predicted, targets.counts)}
