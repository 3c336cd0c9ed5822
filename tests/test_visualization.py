"""detr_lite/visualization.py: labelled boxes readable on any image, attention heat maps in the right place."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from detr_lite.visualization import (
    attention_overlay,
    class_color,
    contrast_color,
    draw_detections,
    query_attention_map,
)

ID2LABEL = {0: "circle", 1: "square", 2: "triangle"}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


def one_box(label: int, box=(40.0, 60.0, 160.0, 140.0), score: float = 0.9) -> dict:
    return {"scores": torch.tensor([score]), "labels": torch.tensor([label]), "boxes": torch.tensor([box])}


def test_draw_detections_keeps_size_and_marks_only_the_boxes():
    image = Image.new("RGB", (240, 180), (90, 120, 150))
    drawn = draw_detections(image, one_box(1), ID2LABEL)
    assert drawn.size == image.size and drawn.mode == "RGB"
    assert pixels(image).tolist() == pixels(Image.new("RGB", (240, 180), (90, 120, 150))).tolist()  # input untouched
    changed = (pixels(drawn) != pixels(image)).any(-1)  # (H, W)
    assert changed[100, 40] and changed[60, 100]  # left and top edges of the box
    assert not changed[100, 100] and not changed[170, 230]  # box interior and far away stay as they were
    assert tuple(pixels(drawn)[100, 41]) == class_color(1)  # the outline is in the class colour


def test_tag_shows_label_and_score_above_the_box():
    image = Image.new("RGB", (240, 180), (90, 120, 150))
    drawn = pixels(draw_detections(image, one_box(2), ID2LABEL, font_size=14))
    tag = drawn[40:59, 40:140]  # the band just above the box's top edge (y0 = 60)
    colors = {tuple(c) for c in tag.reshape(-1, 3)}
    assert class_color(2) in colors  # filled background
    assert contrast_color(class_color(2)) in colors  # text in black or white
    assert (drawn[:30] == pixels(image)[:30]).all()  # a 14-px tag does not reach the image top


def test_distinct_classes_get_distinct_well_separated_colors():
    colors = [class_color(i) for i in range(10)]
    distances = [np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(colors, 2)]
    assert min(distances) > 50
    image = Image.new("RGB", (300, 200), (128, 128, 128))
    detections = {
        "scores": [0.9, 0.8],
        "labels": [0, 1],
        "boxes": [[20.0, 40.0, 120.0, 180.0], [160.0, 40.0, 280.0, 180.0]],
    }
    drawn = pixels(draw_detections(image, detections, ID2LABEL))
    assert tuple(drawn[110, 21]) == class_color(0) and tuple(drawn[110, 161]) == class_color(1)


def contrast_ratio(a, b) -> np.ndarray:
    """WCAG contrast ratio between RGB colours (broadcasts); 3 is the minimum for graphics, 4.5 for text."""
    def luminance(rgb):
        c = np.asarray(rgb, dtype=np.float64) / 255
        c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return c @ np.array([0.2126, 0.7152, 0.0722])

    la, lb = luminance(a), luminance(b)
    return (np.maximum(la, lb) + 0.05) / (np.minimum(la, lb) + 0.05)


@pytest.mark.parametrize("background", [(0, 0, 0), (255, 255, 255)])
def test_boxes_and_tags_stand_out_on_black_and_white_images(background):
    image = Image.new("RGB", (320, 240), background)
    for label in range(12):
        detection = one_box(label, box=(60.0, 80.0, 260.0, 220.0))
        drawn = pixels(draw_detections(image, detection, {label: "class"}, line_width=3, font_size=16))
        outline = drawn[150, 58:65]  # across the left edge: contrasting edge, colour, contrasting edge
        assert contrast_ratio(outline, background).max() >= 3, f"class {label} box hard to see on {background}"
        tag = {tuple(c) for c in drawn[66:78, 62:100].reshape(-1, 3)}  # inside the 16-px tag, off its border
        assert class_color(label) in tag
        assert max(contrast_ratio(c, class_color(label)) for c in tag) >= 4.5, f"class {label} tag text unreadable"


def test_draw_detections_accepts_no_detections_and_unknown_ids():
    image = Image.new("L", (64, 48), 200)
    empty = draw_detections(image, {"scores": [], "labels": [], "boxes": []})
    assert empty.size == (64, 48) and empty.mode == "RGB"
    assert draw_detections(image, one_box(7, box=(5.0, 5.0, 40.0, 40.0))).size == (64, 48)


def test_line_width_grows_with_image_size():
    small = pixels(draw_detections(Image.new("RGB", (200, 200)), one_box(0)))
    large = pixels(draw_detections(Image.new("RGB", (2000, 2000)), one_box(0, box=(400.0, 600.0, 1600.0, 1400.0))))
    small_width = (small[100, 30:60] == class_color(0)).all(-1).sum()
    large_width = (large[1000, 380:440] == class_color(0)).all(-1).sum()
    assert large_width > small_width >= 2


def test_attention_overlay_puts_the_heat_where_the_attention_is():
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    attention = torch.zeros(4, 8)
    attention[0, 7] = 1.0  # top-right cell
    overlay = pixels(attention_overlay(image, attention))
    assert overlay.shape == (100, 200, 3)
    brightness = overlay.sum(-1)
    assert brightness[10, 190] > brightness[10, 10] + 150 and brightness[10, 190] > brightness[90, 190] + 150


def test_attention_overlay_stretches_only_the_unpadded_feature_cells():
    # A letterboxed wide image covers the top half of the square feature map.
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    attention = torch.zeros(4, 4)
    attention[1, :] = 1.0  # last row of real cells = bottom of the image
    feature_mask = torch.zeros(4, 4, dtype=torch.bool)
    feature_mask[:2] = True
    brightness = pixels(attention_overlay(image, attention, feature_mask=feature_mask)).sum(-1)
    assert brightness[95, 100] > brightness[5, 100] + 150
    without_mask = pixels(attention_overlay(image, attention)).sum(-1)  # row 1 of 4 → upper-middle band
    assert without_mask[30, 100] > without_mask[95, 100] + 150


def test_attention_overlay_outlines_the_box():
    image = Image.new("RGB", (120, 90), (128, 128, 128))
    overlay = attention_overlay(image, torch.ones(3, 4), box=(20, 20, 80, 70))
    assert tuple(pixels(overlay)[45, 20]) == (255, 255, 255)
    assert overlay.size == image.size


def test_query_attention_map_averages_heads_of_the_last_layer(tiny_model):
    with torch.no_grad():
        pixel_values = torch.randn(2, 3, 128, 128)
        pixel_mask = torch.ones(2, 128, 128, dtype=torch.long)
        pixel_mask[1, 64:] = 0  # second image letterboxed: bottom half is padding
        outputs = tiny_model(pixel_values, pixel_mask=pixel_mask, output_attentions=True)
    heat = query_attention_map(outputs, image_index=1, query_index=3)
    assert heat.shape == outputs.feature_mask.shape[-2:] == (4, 4)
    expected = outputs.cross_attentions[-1][1, :, 3].mean(0).view(4, 4)
    torch.testing.assert_close(heat, expected)
    assert heat[2:].abs().max() < 1e-6  # padded cells get no attention
    torch.testing.assert_close(heat.sum(), torch.tensor(1.0))
    without = tiny_model(pixel_values, pixel_mask=pixel_mask)
    with pytest.raises(ValueError, match="output_attentions=True"):
        query_attention_map(without, 0, 0)
