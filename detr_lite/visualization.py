"""Pictures of what a DeTR-Lite model sees: labelled detection boxes and decoder attention maps.

`attention_overlay` draws the figure of DETR (Carion et al. 2020, Fig. 6): the last decoder layer's
cross-attention of one object query, averaged over heads, as a heat map over the image.
Drawing is plain PIL + torch; colours are chosen to stay readable on dark and light images.
"""

import colorsys
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

_GOLDEN_RATIO_CONJUGATE = (math.sqrt(5) - 1) / 2  # hue step that keeps any run of classes well apart
_BLACK, _WHITE = (0, 0, 0), (255, 255, 255)
# Heat-map colours from cold to hot (an "inferno"-like ramp: dark purple → red → orange → pale yellow).
_HEAT_STOPS = torch.tensor([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]]) / 255.0


def class_color(class_id: int) -> tuple[int, int, int]:
    """A saturated RGB colour per class: hues stepped by the golden ratio, so neighbouring ids differ most."""
    hue = (0.1 + class_id * _GOLDEN_RATIO_CONJUGATE) % 1.0
    return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95))


def contrast_color(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `color` (WCAG relative luminance threshold)."""
    def linear(channel: int) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    luminance = 0.2126 * linear(color[0]) + 0.7152 * linear(color[1]) + 0.0722 * linear(color[2])
    return _BLACK if luminance > 0.179 else _WHITE


def line_width_for(size: tuple[int, int]) -> int:
    """Box line width for an image of `size` (w, h): 2 px up to ~750 px, then growing with the longer side."""
    return max(2, round(max(size) / 300))


def draw_detections(
    image: Image.Image,
    detections: Mapping[str, Any],
    id2label: Mapping[int, str] | None = None,
    line_width: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """Draw labelled boxes on a copy of `image`.

    Each box has its class colour with a thin black or white edge, and a "label score" tag on a
    filled background in the class colour with black or white text, so boxes read on any image.
    Higher scores are drawn last (on top).

    Args:
        image: The original image (any PIL mode; the result is RGB of the same size).
        detections: `scores` (k,), `labels` (k,) class ids and `boxes` (k, 4) as (x0, y0, x1, y1)
            in `image` pixels: one entry of `post_process_object_detection(..., target_sizes=...)`.
            Tensors or lists.
        id2label: Class id → name; None (or a missing id) shows the id.
        line_width: Box line width in pixels; default grows with the image size.
        font_size: Tag text height in pixels; default grows with the image size.

    Returns:
        A new RGB image, the same size as `image`.
    """
    canvas = image.convert("RGB")  # always a copy: convert returns a new image even for RGB input
    width = line_width or line_width_for(canvas.size)
    font = ImageFont.load_default(size=font_size or max(10, round(max(canvas.size) / 40)))
    draw = ImageDraw.Draw(canvas)
    scores, labels, boxes = (_as_list(detections[key]) for key in ("scores", "labels", "boxes"))
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    for i in order:
        _draw_box(draw, boxes[i], class_color(int(labels[i])), width)
    for i in order:
        name = (id2label or {}).get(int(labels[i]), str(int(labels[i])))
        _draw_tag(draw, boxes[i], f"{name} {scores[i]:.2f}", class_color(int(labels[i])), font, canvas.size)
    return canvas


def attention_overlay(
    image: Image.Image,
    attention_map: Tensor,
    box: Sequence[float] | None = None,
    feature_mask: Tensor | None = None,
    alpha: float = 0.55,
) -> Image.Image:
    """Blend an attention heat map over a copy of `image`.

    Args:
        image: The original image (the result is RGB of the same size).
        attention_map: (h, w) attention weights over the backbone feature map, e.g. from
            `query_attention_map`.
        box: Optional (x0, y0, x1, y1) in `image` pixels, outlined in white with a black edge.
        feature_mask: (h, w) bool, True on feature cells that cover the image (the model output's
            `feature_mask[i]`). For letterboxed inputs only these cells are stretched over the image,
            so the padding's share of the map is not smeared over it. None: the whole map is the image.
        alpha: Opacity of the heat map (0: only the image, 1: only the heat map).

    Returns:
        A new RGB image, the same size as `image`.
    """
    attention = attention_map.detach().float().cpu()
    if feature_mask is not None:
        rows, cols = feature_mask.cpu().nonzero(as_tuple=True)
        attention = attention[: int(rows.max()) + 1, : int(cols.max()) + 1]  # padding is bottom/right
    canvas = image.convert("RGB")
    heat = F.interpolate(attention[None, None], size=canvas.size[::-1], mode="bilinear", align_corners=False)[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp(min=1e-12)  # (H, W) in 0..1
    pixels = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255)  # (H, W, 3)
    blended = pixels * (1 - alpha) + _heat_colors(heat) * alpha  # (H, W, 3)
    result = Image.fromarray((blended * 255).round().to(torch.uint8).numpy())
    if box is not None:
        _draw_box(ImageDraw.Draw(result), box, _WHITE, line_width_for(result.size))
    return result


def query_attention_map(outputs: Any, image_index: int, query_index: int, layer: int = -1) -> Tensor:
    """One object query's decoder cross-attention over the feature map, averaged over heads.

    Args:
        outputs: A model output computed with `output_attentions=True` (`cross_attentions`, one
            (B, heads, Q, HW) tensor per decoder layer, and `feature_mask` (B, h, w)).
        image_index: Which image of the batch.
        query_index: Which object query.
        layer: Which decoder layer; the last one by default, as in the DETR paper.

    Returns:
        (h, w) float tensor of attention weights.
    """
    if outputs.cross_attentions is None:
        raise ValueError("The model output has no cross_attentions: call the model with output_attentions=True.")
    height, width = outputs.feature_mask.shape[-2:]
    weights = outputs.cross_attentions[layer][image_index, :, query_index]  # (heads, HW)
    return weights.float().mean(0).view(height, width)


def _as_list(values: Any) -> list:
    return values.tolist() if isinstance(values, Tensor) else list(values)


def _draw_box(draw: ImageDraw.ImageDraw, box: Sequence[float], color: tuple[int, int, int], width: int) -> None:
    """A `width`-px outline in `color` between 1-px contrasting edges, drawn on the box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    edge = contrast_color(color)
    draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=edge, width=width + 2)
    draw.rectangle((x0, y0, x1, y1), outline=color, width=width)


def _draw_tag(
    draw: ImageDraw.ImageDraw,
    box: Sequence[float],
    text: str,
    color: tuple[int, int, int],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    image_size: tuple[int, int],
) -> None:
    """`text` on a filled `color` tag above the box's top-left corner (inside it at the image top)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, (bottom - top) // 5)
    tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, float(box[0])), max(0.0, image_size[0] - tag_w))
    y = float(box[1]) - tag_h if float(box[1]) >= tag_h else max(0.0, float(box[1]))
    draw.rectangle((x, y, x + tag_w, y + tag_h), fill=color, outline=contrast_color(color))
    draw.text((x + pad - left, y + pad - top), text, fill=contrast_color(color), font=font)


def _heat_colors(values: Tensor) -> Tensor:
    """(H, W) values in 0..1 → (H, W, 3) RGB in 0..1, interpolated linearly between `_HEAT_STOPS`."""
    position = values.clamp(0, 1) * (len(_HEAT_STOPS) - 1)
    low = position.floor().long().clamp(max=len(_HEAT_STOPS) - 2)
    fraction = (position - low)[..., None]
    return _HEAT_STOPS[low] * (1 - fraction) + _HEAT_STOPS[low + 1] * fraction
