"""Where the decoder's object queries come from, and how their boxes are decoded.

This module is the one place where DeTR-Lite's options depart from DETR's query path; with the defaults
(`query_source="learned"`) the model is DETR.

- `LearnedQueries` (DETR, Carion et al. 2020): `num_queries` learned position embeddings with empty content.
  Each query must discover by itself where to look, which is why DETR converges slowly.
- `EncoderQueries` (`query_source="encoder"`; the two-stage scheme of Deformable DETR, Zhu et al. 2021, and
  RT-DETR, Zhao et al. 2024): every encoder token proposes a class and a box, an offset from an anchor centred
  on the token (`anchor_size`). The proposals are trained as one more prediction layer. The decoder's queries
  are the `num_selected_queries` best-scoring proposals (0: every token): content the projected token, position
  the token's, first reference box the proposal's. Few, distinct queries leave the decoder's self-attention
  little to de-duplicate.
- `one_to_many_copies` k > 0 (training only; H-DETR's hybrid branch, Jia et al. 2023): a second group of
  queries, the best k·K proposals marked by a learned group embedding and decoded apart from the first (neither
  group attends to the other), is matched to every target k times. Many queries learn from each object, which
  speeds up training, while the first group, the only one used for inference, stays one-to-one and needs no NMS.
- With `box_refinement`, each decoder layer refines the box of the layer before it (Deformable DETR's
  iterative refinement); otherwise every layer predicts an offset from the query's first reference box.
- With `box_query_position` (DAB-DETR, Liu et al. 2022), the query position at each decoder layer is embedded
  from the query's current reference box (`BoxPositionEmbedding`) rather than fixed to its token's position:
  cross-attention looks around the box, and self-attention sees which queries hold nearly the same box.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from .configuration_detr_lite import DeTRLiteConfig


@dataclass
class Queries:
    """The decoder's input queries, and for encoder queries the token proposals they were chosen from.

    Attributes:
        content: (B, Q, D) initial query content, or None for DETR's empty (zero) content.
        position: (B, Q, D) query position embedding, added to the queries at every attention layer.
        reference_boxes: (B, Q, 4) normalised (cx, cy, w, h) box each query's first offset applies to, or
            None (learned queries predict absolute boxes).
        proposal_logits: (B, HW, C + 1) every token's class proposal, or None.
        proposal_boxes: (B, HW, 4) every token's box proposal, or None.
        one_to_many: the training-only one-to-many group (content, position, reference boxes), or None.
    """

    content: torch.Tensor | None
    position: torch.Tensor
    reference_boxes: torch.Tensor | None = None
    proposal_logits: torch.Tensor | None = None
    proposal_boxes: torch.Tensor | None = None
    one_to_many: "Queries | None" = None


class LearnedQueries(nn.Embedding):
    """DETR's object queries: `num_queries` learned position embeddings (the rows); the content starts empty."""

    module_name = "query_position_embeddings"  # where the model holds it: DETR's checkpoint layout

    def __init__(self, config: DeTRLiteConfig):
        super().__init__(config.num_queries, config.d_model)

    def forward(self, memory: torch.Tensor, pos: torch.Tensor, feature_mask: torch.Tensor) -> Queries:
        position = self.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)  # (B, Q, D)
        return Queries(content=None, position=position)


class EncoderQueries(nn.Module):
    """Queries made from the encoder's tokens: each token proposes a box, the best proposals become queries."""

    module_name = "encoder_queries"

    def __init__(self, config: DeTRLiteConfig):
        super().__init__()
        d_model = config.d_model
        self.anchor_size = config.anchor_size
        self.num_selected = config.num_selected_queries
        self.one_to_many_copies = config.one_to_many_copies
        self.query_projection = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model))
        self.proposal_class = nn.Linear(d_model, config.num_labels + 1)
        self.proposal_box = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, 4))
        if config.one_to_many_copies:
            self.one_to_many_embedding = nn.Embedding(1, d_model)

    def forward(self, memory: torch.Tensor, pos: torch.Tensor, feature_mask: torch.Tensor) -> Queries:
        """memory, pos (B, HW, D); feature_mask (B, h, w) True on real tokens."""
        content = self.query_projection(memory)  # (B, HW, D)
        anchors = token_anchor_boxes(feature_mask, self.anchor_size)  # (B, HW, 4)
        logits = self.proposal_class(content)  # (B, HW, C + 1)
        boxes = offset_boxes(self.proposal_box(content), anchors)  # (B, HW, 4)
        queries = Queries(content, pos, boxes.detach(), logits, boxes)
        real = feature_mask.flatten(1)
        selected = self._select(queries, real, self.num_selected)
        if self.training and self.one_to_many_copies:
            group = self._select(queries, real, self.num_selected * self.one_to_many_copies)
            group.content = group.content + self.one_to_many_embedding.weight
            selected.one_to_many = group
        return selected

    @staticmethod
    def _select(queries: Queries, real: torch.Tensor, count: int) -> Queries:
        """The `count` tokens whose best object class scores highest (all when 0 or more than there are);
        padding is never chosen."""
        if not 0 < count < real.shape[1]:
            return Queries(queries.content, queries.position, queries.reference_boxes, queries.proposal_logits,
                           queries.proposal_boxes)
        score = queries.proposal_logits[..., :-1].detach().amax(-1).masked_fill(~real, float("-inf"))  # (B, HW)
        index = score.topk(count, dim=1).indices  # (B, count)

        def gather(values: torch.Tensor) -> torch.Tensor:
            return values.gather(1, index[..., None].expand(-1, -1, values.shape[-1]))

        return Queries(gather(queries.content), gather(queries.position), gather(queries.reference_boxes),
                       queries.proposal_logits, queries.proposal_boxes)


def sine_features(values: torch.Tensor, num_features: int, temperature: float = 10000.0) -> torch.Tensor:
    """Transformer sine features of scalar positions: (...) -> (..., num_features), sin/cos pairs interleaved.

    `values` are already scaled (DETR scales normalised positions by 2π); pair i has wavelength
    temperature^(2i / num_features), as in "Attention Is All You Need".
    """
    exponent = 2 * torch.div(torch.arange(num_features, device=values.device), 2, rounding_mode="floor") / num_features
    angles = values[..., None] / temperature**exponent  # (..., F): each sin/cos pair shares one frequency
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


class BoxPositionEmbedding(nn.Module):
    """A query position from a box (DAB-DETR): sine features of cx, cy, w and h (d_model / 2 each), then an MLP."""

    def __init__(self, d_model: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes (B, Q, 4) normalised (cx, cy, w, h) -> (B, Q, d_model)."""
        num_features = self.mlp[0].in_features // 4
        return self.mlp(sine_features(boxes * (2 * math.pi), num_features).flatten(-2))


def build_queries(config: DeTRLiteConfig) -> LearnedQueries | EncoderQueries:
    """The query source the config asks for; the model holds it as its `module_name` attribute."""
    return EncoderQueries(config) if config.query_source == "encoder" else LearnedQueries(config)


def token_anchor_boxes(feature_mask: torch.Tensor, size: float) -> torch.Tensor:
    """One anchor box per feature-map token: centred on the token, `size` wide and high.

    Centres are normalised by each image's unpadded extent, the convention of DETR's boxes (and of
    `sine_position_embedding`); a token over padding gets the centre of the last real row or column.

    Args:
        feature_mask: (B, h, w) bool, True on real (unpadded) positions.
        size: anchor width and height, as a fraction of the image side.

    Returns:
        (B, h * w, 4) float32 (cx, cy, w, h), row-major like the tokens.
    """
    not_padded = feature_mask.float()
    rows, cols = not_padded.cumsum(1), not_padded.cumsum(2)  # 1-based index of each real token
    centre_y = (rows - 0.5) / rows[:, -1:, :].clamp(min=1)
    centre_x = (cols - 0.5) / cols[:, :, -1:].clamp(min=1)
    edge = 1e-3  # inside (0, 1), where the box logit the heads add to is finite
    centres = torch.stack([centre_x, centre_y], -1).clamp(edge, 1 - edge)  # (B, h, w, 2)
    return torch.cat([centres, torch.full_like(centres, size)], -1).flatten(1, 2)


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """logit(x) for x in (0, 1), clamped away from 0 and 1 so that it stays finite."""
    return torch.logit(x, eps=1e-5)


def offset_boxes(offsets: torch.Tensor, reference_boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (cx, cy, w, h) in [0, 1]: `offsets` added to the reference boxes in logit space."""
    return (offsets + inverse_sigmoid(reference_boxes)).sigmoid()


def decode_boxes(offsets: torch.Tensor, reference_boxes: torch.Tensor | None, refine: bool) -> torch.Tensor:
    """Box head outputs (L, B, Q, 4) -> boxes (cx, cy, w, h) in [0, 1] for every decoder layer.

    Learned queries (no reference): sigmoid(offsets), as DETR. Otherwise offsets in logit space from the
    query's reference box; with `refine`, each layer refines the box of the layer before it instead, the
    previous box detached so that every layer learns its own correction.
    """
    if reference_boxes is None:
        return offsets.sigmoid()
    if not refine:
        return offset_boxes(offsets, reference_boxes)
    boxes, reference = [], reference_boxes
    for layer_offsets in offsets:
        boxes.append(offset_boxes(layer_offsets, reference))
        reference = boxes[-1].detach()
    return torch.stack(boxes)
