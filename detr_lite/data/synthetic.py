"""Built-in synthetic shapes dataset, written to disk in DeTR-Lite's COCO layout.

Every image is a pure function of ``(seed, split, index)``: the same seed gives byte-identical
annotation files and identical pixels (given the same numpy and Pillow versions).
Images are non-square, with a textured background (colour gradient, low-frequency blotches,
straight-line clutter, sensor noise) and 1-10 solid shapes from :data:`SHAPE_CLASSES`, each
contrasting with what it covers. Shapes may overlap, but every object keeps most of its pixels
and of its box visible, and its box is the tight box of its *visible* pixels (as COCO's boxes
are), so the ground truth stays honest.

Layout::

    DIR/annotations/instances_train.json   DIR/train/000000.jpg ...
    DIR/annotations/instances_val.json     DIR/val/000000.jpg ...
    DIR/synthetic.json                     manifest, written last: marks a complete set
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import multiprocessing
import os
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

SHAPE_CLASSES = ("circle", "ellipse", "square", "triangle", "star", "cross", "ring")
SPLITS = ("train", "val")

GENERATOR_VERSION = 1  # bump whenever pixels or annotations change: invalidates cached sets
MANIFEST_NAME = "synthetic.json"
LONG_SIDE_RANGE = (320, 512)  # modest sizes: a small DETR learns the set on a CPU in minutes
ASPECT_RANGE = (0.6, 1.6)  # width / height
MAX_OBJECTS = 10
PLACEMENT_ATTEMPTS = 8  # proposals per wanted object before settling for fewer objects
# Shape diameter / short side, uniform: tight boxes span ~5%-50% of the side (median ~25%, one in
# ten under 10%); uniform rather than log-uniform so that a small model learns quickly.
DIAMETER_RANGE = (0.07, 0.55)
MIN_OBJECT_PIXELS = 24  # a proposal whose drawn mask is smaller than this is not an object
MIN_VISIBLE_FRACTION = 0.6  # an occluded object keeps this share of its pixels ...
MIN_VISIBLE_BOX_FRACTION = 0.7  # ... and of its box area, so it stays recognisable
MIN_CONTRAST = 90.0  # RGB distance from the object colour to 90% of the pixels it covers
COLOUR_CANDIDATES = 32
SUPERSAMPLE = 2  # shapes are drawn at 2x and averaged down: anti-aliased edges
JPEG_OPTIONS = {"quality": 90, "subsampling": 0}  # 4:4:4 keeps small shapes' colours crisp
_IMAGE_NAME = re.compile(r"^(\d{6})\.jpg$")


@dataclass
class SyntheticSample:
    """One rendered image and its ground truth.

    Attributes:
        image: (H, W, 3) uint8 RGB pixels.
        instance_map: (H, W) int16, index into ``annotations`` of the object that owns each pixel
            (-1 = background).
        annotations: COCO-style dicts without ids: ``category_id`` (1..K, the position in
            :data:`SHAPE_CLASSES` plus one), ``bbox`` (x, y, w, h) tight around the visible
            pixels, ``area`` (visible pixel count), ``iscrowd`` 0.
    """

    image: np.ndarray
    instance_map: np.ndarray
    annotations: list[dict]


@dataclass
class _Shape:
    label: int
    x0: int
    y0: int
    alpha: np.ndarray  # (n, n) float32 coverage in [0, 1]
    pixels: int  # drawn pixel count before any occlusion
    box_area: int  # drawn tight-box area before any occlusion

    @property
    def mask(self) -> np.ndarray:
        return self.alpha >= 0.5

    @property
    def window(self) -> tuple[slice, slice]:
        n = self.alpha.shape[0]
        return slice(self.y0, self.y0 + n), slice(self.x0, self.x0 + n)


def make_synthetic_dataset(
    output_dir: str | os.PathLike,
    num_train: int = 2000,
    num_val: int = 200,
    seed: int = 0,
    progress: bool = False,
    workers: int | None = None,
) -> Path:
    """Write the synthetic shapes dataset (cached: a complete identical set is reused).

    Args:
        output_dir: Folder to hold ``annotations/``, ``train/``, ``val/`` and the manifest.
        num_train: Number of training images.
        num_val: Number of validation images.
        seed: Generation seed; the same seed gives the same files.
        progress: Show a progress bar per split.
        workers: Processes rendering images in parallel (the files do not depend on it); None: one per
            available core for sets of 64 images or more, else 1.

    Returns:
        ``Path(output_dir)``, ready for the COCO loader with splits ``"train"`` and ``"val"``.
    """
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    root = Path(output_dir)
    manifest = {
        "generator": "detr_lite.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
    }
    if _is_complete(root, manifest):
        return root
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    if workers is None:
        workers = _available_cores() if num_train + num_val >= 64 else 1
    # fork: the workers need only numpy and Pillow, and start at once (spawn would re-import torch in each).
    parallel = workers > 1 and "fork" in multiprocessing.get_all_start_methods()
    with (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) if parallel
          else contextlib.nullcontext()) as pool:
        map_images = functools.partial(pool.map, chunksize=16) if parallel else map  # results in input order
        for split_index, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
            _write_split(root, split, split_index, count, seed, progress, map_images)
    _write_json_atomic(root / MANIFEST_NAME, manifest)
    return root


def render_sample(seed: int, split_index: int, index: int) -> SyntheticSample:
    """Render image ``index`` of split ``split_index`` (0 = train, 1 = val) for ``seed``."""
    rng = np.random.default_rng([seed, split_index, index])
    height, width = _image_size(rng)
    image = _background(rng, height, width)
    instance_map = np.full((height, width), -1, dtype=np.int16)
    shapes: list[_Shape] = []
    wanted = int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(wanted * PLACEMENT_ATTEMPTS):
        if len(shapes) == wanted:
            break
        shape = _propose(rng, height, width)
        placed = _place(shape, shapes, instance_map)
        if placed is None:
            continue
        instance_map = placed
        _paint(rng, image, shape)
        shapes.append(shape)
    noise = rng.standard_normal((height, width, 1), dtype=np.float32)  # luminance noise
    image += rng.uniform(2.0, 8.0) * noise
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    annotations = [_annotation(instance_map, k, s) for k, s in enumerate(shapes)]
    return SyntheticSample(pixels, instance_map, annotations)


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    long_side = int(rng.integers(LONG_SIDE_RANGE[0], LONG_SIDE_RANGE[1] + 1))
    aspect = math.exp(rng.uniform(math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])))
    if aspect >= 1.0:
        return round(long_side / aspect), long_side
    return long_side, round(long_side * aspect)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32: a colour gradient with soft blotches, crossed by a few straight lines.

    Gradient and blotches are laid on a coarse grid and upsampled bicubically in one go: the
    upsampling keeps a linear gradient linear and turns the grid noise into smooth blotches.
    """
    rows, cols = (int(n) for n in rng.integers(3, 9, 2))
    start, end = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(0, math.cos(angle), cols) + np.linspace(0, math.sin(angle), rows)[:, None]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)  # (rows, cols) in [0, 1]
    grid = start + ramp[..., None] * (end - start) + rng.normal(0, rng.uniform(10, 35), (rows, cols, 3))
    canvas = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 9))):
        ends = rng.uniform(0, 1, 4) * [width, height, width, height]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line(ends.tolist(), fill=colour, width=int(rng.integers(1, 5)))
    return np.asarray(canvas, dtype=np.float32)


def _propose(rng: np.random.Generator, height: int, width: int) -> _Shape:
    label = int(rng.integers(len(SHAPE_CLASSES)))
    diameter = rng.uniform(*DIAMETER_RANGE) * min(height, width)
    alpha = _shape_alpha(SHAPE_CLASSES[label], diameter / 2, rng)
    n = alpha.shape[0]
    x0, y0 = int(rng.integers(0, width - n + 1)), int(rng.integers(0, height - n + 1))
    ys, xs = np.nonzero(alpha >= 0.5)
    return _Shape(label, x0, y0, alpha, pixels=len(ys), box_area=_box_area(ys, xs))


def _shape_alpha(name: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """(n, n) float32 coverage of one shape of circumradius ``radius`` centred in the square."""
    half = math.ceil(radius) + 1
    side = 2 * half * SUPERSAMPLE
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    for outline, fill in _shape_parts(name, radius * SUPERSAMPLE, rng):
        draw.polygon([tuple(p) for p in (outline + side / 2).tolist()], fill=fill)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0  # box-filter average


def _shape_parts(name: str, r: float, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Polygons (k, 2) centred on the origin with fill 255 (shape) or 0 (hole), all within ``r``."""
    angle = rng.uniform(0, 2 * math.pi)
    if name == "circle":
        return [(_ellipse(r, r, 0.0), 255)]
    if name == "ellipse":  # aspect at most 0.6 so that ellipses never pass for circles
        return [(_ellipse(r, r * rng.uniform(0.35, 0.6), angle), 255)]
    if name == "ring":  # the hole is wide enough to show through even on small rings
        return [(_ellipse(r, r, 0.0), 255), (_ellipse(*(2 * [r * rng.uniform(0.45, 0.62)]), 0.0), 0)]
    if name == "square":
        return [(_polar(np.full(4, r), angle + np.arange(4) * math.pi / 2), 255)]
    if name == "triangle":  # near-equilateral, corners jittered
        corners = angle + np.arange(3) * 2 * math.pi / 3 + rng.uniform(-0.15, 0.15, 3)
        return [(_polar(np.full(3, r), corners), 255)]
    if name == "star":
        radii = np.tile([r, r * rng.uniform(0.38, 0.5)], 5)
        return [(_polar(radii, angle + np.arange(10) * math.pi / 5), 255)]
    if name == "cross":  # plus sign; arm length chosen so its outer corners sit on the circle
        w = r * rng.uniform(0.2, 0.3)
        a = math.sqrt(r * r - w * w)
        quarter = np.array([[w, a], [w, w], [a, w]])
        arms = np.concatenate([quarter @ _rotation(-k * math.pi / 2).T for k in range(4)])  # clockwise
        return [(arms @ _rotation(angle).T, 255)]
    raise ValueError(f"unknown shape {name!r}; expected one of {SHAPE_CLASSES}")


def _ellipse(rx: float, ry: float, angle: float, points: int = 96) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1) @ _rotation(angle).T


def _polar(radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _place(shape: _Shape, shapes: list[_Shape], instance_map: np.ndarray) -> np.ndarray | None:
    """The instance map with ``shape`` on top, or None if the shape is too small to be an object
    or would hide too much of one already placed."""
    if shape.pixels < MIN_OBJECT_PIXELS:
        return None
    mask = shape.mask
    placed = instance_map.copy()
    window = placed[shape.window]
    covered = np.unique(window[mask])
    window[mask] = len(shapes)
    for k in covered[covered >= 0]:
        other = shapes[k]
        ys, xs = np.nonzero(placed[other.window] == k)
        if ys.size < MIN_VISIBLE_FRACTION * other.pixels:
            return None
        if _box_area(ys, xs) < MIN_VISIBLE_BOX_FRACTION * other.box_area:
            return None
    return placed


def _box_area(ys: np.ndarray, xs: np.ndarray) -> int:
    """Area of the tight box around pixels at rows ``ys``, columns ``xs`` (0 for none)."""
    return int((np.ptp(ys) + 1) * (np.ptp(xs) + 1)) if len(ys) else 0


def _paint(rng: np.random.Generator, image: np.ndarray, shape: _Shape) -> None:
    """Blend the shape into ``image`` in place: a contrasting colour with a gentle shading ramp."""
    window = image[shape.window]
    colour = _contrasting_colour(rng, window[shape.mask])
    n = shape.alpha.shape[0]
    angle = rng.uniform(0, 2 * math.pi)
    steps = np.arange(n, dtype=np.float32) / n
    ramp = steps * math.cos(angle) + steps[:, None] * math.sin(angle)  # (n, n)
    fill = colour + rng.uniform(0.0, 20.0) * ramp[..., None]
    alpha = shape.alpha[..., None]
    window[...] = window * (1.0 - alpha) + fill * alpha


def _contrasting_colour(rng: np.random.Generator, covered: np.ndarray) -> np.ndarray:
    """(3,) float32 colour far (RGB distance) from at least 90% of the ``covered`` (m, 3) pixels."""
    covered = covered[:: max(1, len(covered) // 256)]
    candidates = rng.integers(0, 256, (COLOUR_CANDIDATES, 3)).astype(np.float32)
    squared = ((candidates[:, None, :] - covered[None, :, :]) ** 2).sum(axis=2)  # (C, m)
    contrast = np.sqrt(np.partition(squared, len(covered) // 10, axis=1)[:, len(covered) // 10])
    good = np.flatnonzero(contrast >= MIN_CONTRAST)
    return candidates[good[0] if good.size else int(contrast.argmax())]


def _annotation(instance_map: np.ndarray, k: int, shape: _Shape) -> dict:
    ys, xs = np.nonzero(instance_map[shape.window] == k)
    x, y = shape.x0 + int(xs.min()), shape.y0 + int(ys.min())
    box = [x, y, int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
    return {"category_id": shape.label + 1, "bbox": box, "area": int(ys.size), "iscrowd": 0}


def _write_split(root: Path, split: str, split_index: int, count: int, seed: int, progress: bool,
                 map_images: Callable) -> None:
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    written = map_images(functools.partial(_write_image, image_dir, seed, split_index), range(count))
    for index, (file_name, width, height, image_annotations) in enumerate(
            tqdm(written, total=count, desc=f"synthetic {split}", unit="img", disable=not progress)):
        images.append({"id": index + 1, "file_name": file_name, "width": width, "height": height})
        for annotation in image_annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **annotation})
    _remove_stale_images(image_dir, count)
    coco = {
        "info": {"description": "DeTR-Lite synthetic shapes", "version": GENERATOR_VERSION, "seed": seed},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)],
    }
    _write_json_atomic(root / "annotations" / f"instances_{split}.json", coco)


def _write_image(image_dir: Path, seed: int, split_index: int, index: int) -> tuple[str, int, int, list[dict]]:
    """Render and save one image; returns its file name, width, height and annotations."""
    sample = render_sample(seed, split_index, index)
    height, width = sample.image.shape[:2]
    file_name = f"{index:06d}.jpg"
    Image.fromarray(sample.image).save(image_dir / file_name, **JPEG_OPTIONS)
    return file_name, width, height, sample.annotations


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _remove_stale_images(image_dir: Path, count: int) -> None:
    """Delete images a previous, larger generation left behind (only files named like ours)."""
    for path in image_dir.iterdir():
        match = _IMAGE_NAME.match(path.name)
        if match and int(match.group(1)) >= count:
            path.unlink()


def _is_complete(root: Path, manifest: dict) -> bool:
    try:
        found = json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    annotation_files = (root / "annotations" / f"instances_{split}.json" for split in SPLITS)
    return found == manifest and all(path.is_file() for path in annotation_files)


def _write_json_atomic(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, separators=(",", ":")))
    os.replace(temporary, path)
