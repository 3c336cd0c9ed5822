"""DeTR-Lite image processor: any image (or a path or URL) → RGB → letterbox (or stretch) onto a square canvas
→ batch.

Settings use transformers' names and meanings (as its DETR processor): `size` as `{"longest_edge": S}` or
`{"max_height": S, "max_width": S}` (letterbox) or `{"height": S, "width": S}` (stretch), `do_resize`,
`do_rescale`/`rescale_factor`, `do_normalize`/`image_mean`/`image_std`, `do_pad`/`pad_size`, `resample`; each can
also be given per call. An int `size` (older saved configs) is the letterbox.

Conventions follow DETR (Carion et al. 2020) and its transformers port, written afresh:
- pixels are ImageNet-normalised and padded pixels are `pad_value` (0.0) in the *normalised* tensor,
  with `pixel_mask` marking the real pixels, so the model's mask-normalised position embedding and
  attention see only the image;
- label and predicted boxes are (cx, cy, w, h) normalised to the unpadded resized image, which in
  both resize modes equals normalising by the original width and height.

Image conversion decisions (documented once here, tested in tests/test_image_processing.py):
- EXIF orientation is applied first; sizes, boxes and `orig_size` are in the upright frame.
- Alpha is dropped, not composited: that is what `PIL.Image.convert("RGB")` does, and therefore what
  the transformers pipeline (`load_image`) and the COCO/torchvision loaders do, so training and
  pipeline inference see the same pixels.
- Integer PIL modes are scaled by their bit depth: I;16* by 65535, I by 65535 when its values fit in
  16 bits (how Pillow stores 16-bit PNG/TIFF data) and by 2**31 - 1 otherwise. PIL "F" images use
  PIL's own 0..255 convention (what `convert("F")` produces); float arrays and tensors use 0..1;
  uint16 arrays are 16-bit; other integer arrays hold 0..255 values.
- Every image becomes uint8 RGB before resizing, so all input types give identical pixel values.

Hub rule: copied for trust_remote_code, so it imports only torch, transformers, numpy and PIL.
"""

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps
from torch import Tensor
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, load_image

from .box_ops import center_to_corners, corners_to_center

ImageLike = Image.Image | np.ndarray | Tensor | str | os.PathLike

_RESIZE_MODES = ("letterbox", "stretch")
# The accepted forms of `size` (transformers' keys) and the resize each one means.
_SIZE_FORMS = {("longest_edge",): "letterbox", ("max_height", "max_width"): "letterbox",
               ("height", "width"): "stretch"}
_URL_TIMEOUT_S = 10.0
_MIN_SIZE = 32  # the ResNet backbone downsamples by 32: smaller canvases leave no feature map
# PIL resample ids → torch interpolate modes. torch's antialiased uint8 kernels reproduce PIL's
# filters (bilinear bit-exactly) and are ~4x faster than PIL.resize on 2 CPU cores.
_INTERPOLATION = {
    int(Image.Resampling.NEAREST): "nearest-exact",
    int(Image.Resampling.BILINEAR): "bilinear",
    int(Image.Resampling.BICUBIC): "bicubic",
}
# Modes that PIL cannot turn into RGB directly (La) or only with a warning (P with transparency).
_CONVERT_VIA = {"P": "RGBA", "PA": "RGBA", "La": "LA", "RGBa": "RGBA"}
_CHANNEL_COUNTS = (1, 2, 3, 4)  # gray, gray + alpha, RGB, RGBA


class DeTRLiteImageProcessorKwargs(TypedDict, total=False):
    """Keyword arguments `from_pretrained(..., **kwargs)` may override."""

    size: dict | int
    resize_mode: str
    do_resize: bool
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: list[float]
    image_std: list[float]
    do_pad: bool
    pad_size: dict | None
    pad_value: float
    label2id: dict | None
    resample: int


class DeTRLiteImageProcessor(BaseImageProcessor):
    """Turns images (and COCO annotations) into DeTR-Lite inputs; turns outputs into boxes.

    Args:
        size: The square canvas S (>= 32) and how images are fitted to it: `{"longest_edge": S}` or
            `{"max_height": S, "max_width": S}`: letterbox, the longest side becomes S, aspect ratio kept, image
            at the top-left, padding bottom/right. `{"height": S, "width": S}`: stretch, a plain S×S resize.
            An int S is the letterbox (or, with `resize_mode="stretch"`, the stretch).
        resize_mode: Only with an int `size` (older configs): `"letterbox"` or `"stretch"`.
        do_resize: If False, images keep their size (each must fit in `pad_size`).
        do_rescale: If True, pixels are multiplied by `rescale_factor` (1/255: 0..1).
        rescale_factor: The rescale multiplier, > 0.
        do_normalize: If True, pixels are mean/std normalised (after rescaling).
        image_mean: Per-channel RGB mean in 0..1 (ImageNet by default).
        image_std: Per-channel RGB standard deviation in 0..1, all > 0 (ImageNet by default).
        do_pad: If True, images are padded bottom/right to `pad_size`; if False, the images of a batch must
            come out of resizing with one size.
        pad_size: `{"height", "width"}` of the padded batch, at least the canvas; None: the canvas S×S.
        pad_value: Value of padded pixels in the returned (normalised) `pixel_values`; 0.0 as in DETR.
        label2id: Maps dataset category ids (COCO's sparse ints, VOC names) to contiguous classes
            0..K-1. None: category ids are already class indices and are used as they are.
        resample: PIL resampling filter: NEAREST (0), BILINEAR (2, default) or BICUBIC (3).
    """

    model_input_names = ["pixel_values", "pixel_mask"]
    valid_kwargs = DeTRLiteImageProcessorKwargs

    def __init__(
        self,
        size: Mapping[str, int] | int = 640,
        resize_mode: str | None = None,
        do_resize: bool = True,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        do_pad: bool = True,
        pad_size: Mapping[str, int] | None = None,
        pad_value: float = 0.0,
        label2id: Mapping[Any, int] | None = None,
        resample: int = Image.Resampling.BILINEAR,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)  # hub bookkeeping keys (image_processor_type, auto_map) become attributes
        self.size = _size_dict(size, resize_mode)
        self.do_resize, self.do_rescale, self.rescale_factor = do_resize, do_rescale, rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = _channel_constants("image_mean", image_mean)
        self.image_std = _channel_constants("image_std", image_std)
        self.do_pad = do_pad
        self.pad_size = None if pad_size is None else dict(pad_size)
        self.pad_value = pad_value
        self.label2id = None if label2id is None else {_category_key(k): v for k, v in label2id.items()}
        self.resample = resample
        self._validate()

    @property
    def canvas_size(self) -> int:
        """S, the side of the square canvas images are resized to."""
        return int(next(iter(self.size.values())))

    @property
    def resize_mode(self) -> str:
        """`"letterbox"` or `"stretch"`, as `size`'s keys say."""
        return _SIZE_FORMS[tuple(self.size)]

    def _validate(self) -> None:
        def fail(field: str, message: str) -> None:
            raise ValueError(f"DeTRLiteImageProcessor.{field}: {message}")

        for field in ("do_resize", "do_rescale", "do_normalize", "do_pad"):
            if not isinstance(getattr(self, field), bool):
                fail(field, f"must be True or False, got {getattr(self, field)!r}.")
        if not isinstance(self.rescale_factor, int | float) or not self.rescale_factor > 0:
            fail("rescale_factor", f"must be a positive number, got {self.rescale_factor!r}.")
        if self.pad_size is not None and (set(self.pad_size) != {"height", "width"} or not all(
                _is_int(v) and v >= self.canvas_size for v in self.pad_size.values())):
            fail("pad_size", f"must be None or {{'height': H, 'width': W}} with H and W at least the canvas "
                 f"({self.canvas_size}), got {self.pad_size!r}.")
        if any(s <= 0 for s in self.image_std):
            fail("image_std", f"every channel must be > 0 (it divides the pixels), got {self.image_std}.")
        if not isinstance(self.pad_value, int | float) or not math.isfinite(self.pad_value):
            fail("pad_value", f"must be a finite number, got {self.pad_value!r}.")
        if self.resample not in _INTERPOLATION:
            fail("resample", f"must be PIL NEAREST (0), BILINEAR (2) or BICUBIC (3), got {self.resample!r}.")
        if self.label2id is not None:
            classes = set(self.label2id.values())
            if not all(_is_int(c) for c in classes) or classes != set(range(len(classes))):
                fail("label2id", f"values must be the contiguous class indices 0..K-1, got {sorted(classes, key=str)}.")
            self.label2id = {key: int(index) for key, index in self.label2id.items()}
        # plain Python numbers, so preprocessor_config.json can hold them
        self.resample, self.pad_value, self.rescale_factor = int(self.resample), float(self.pad_value), float(
            self.rescale_factor)
        self.size = {key: int(value) for key, value in self.size.items()}
        if self.pad_size is not None:
            self.pad_size = {key: int(value) for key, value in self.pad_size.items()}

    def to_dict(self) -> dict[str, Any]:
        """Serialisable settings; `label2id` and `pad_size` are written even when None so the file lists every
        field."""
        output = super().to_dict()
        output["label2id"], output["pad_size"] = self.label2id, self.pad_size
        return output

    def __call__(
        self,
        images: ImageLike | Sequence[ImageLike],
        annotations: Mapping | Sequence[Mapping] | None = None,
        return_tensors: str | None = "pt",
        **settings: Any,
    ) -> BatchFeature:
        """Same as `preprocess`."""
        return self.preprocess(images, annotations=annotations, return_tensors=return_tensors, **settings)

    def preprocess(
        self,
        images: ImageLike | Sequence[ImageLike],
        annotations: Mapping | Sequence[Mapping] | None = None,
        return_tensors: str | None = "pt",
        **settings: Any,
    ) -> BatchFeature:
        """Resize, pad and normalise a batch of images; convert their COCO annotations to labels.

        Args:
            images: One image or a list of B images: PIL images in any mode, numpy arrays or torch
                tensors, (H, W), (H, W, C) or (C, H, W) with C in 1..4 (arrays are read channels-last
                and tensors channels-first when both fit), uint8, uint16, bool or float in 0..1;
                file paths; http(s) URLs (fetched, where the network allows). A 4-D array/tensor is a batch.
            annotations: One COCO detection target per image (a single dict for a single image):
                `{"image_id": int, "annotations": [{"bbox": [x, y, w, h], "category_id", "area",
                "iscrowd"}, ...]}` with bbox in pixels of the original (EXIF-upright) image.
            return_tensors: Only `"pt"` (or None, same result): the outputs are torch tensors.
            **settings: Any constructor setting (`size`, `do_resize`, `do_rescale`, `do_normalize`, `do_pad`,
                ...) for this call only.

        Returns:
            `BatchFeature` with `pixel_values` float (B, 3, H, W) (`pad_size`, S×S by default), `pixel_mask`
            long (B, H, W) with 1 on real pixels and 0 on padding, and, when annotations are given,
            `labels`: a list of B dicts with `class_labels` long (n,), `boxes` float (n, 4) as
            (cx, cy, w, h) normalised to the unpadded resized image, `image_id` long (1,),
            `orig_size` and `size` long (2,) as (h, w) of the original and of the unpadded resized
            image, `area` float (n,) in resized pixels and `iscrowd` long (n,). Crowd boxes are
            left out, boxes are clipped to the image and boxes left with no area are dropped.

        Raises:
            ValueError: unsupported or unreadable image (naming the path or URL), an unknown or invalid
                setting, images that do not fit the padded size, annotation count mismatch, malformed bbox,
                or a category id that `label2id` does not know (or, without label2id, not a class index).
        """
        if settings:
            return self._with_settings(settings).preprocess(images, annotations, return_tensors)
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' (torch tensors), got {return_tensors!r}.")
        images = [_to_rgb_uint8(image) for image in _as_image_list(images)]
        orig_sizes = [tuple(image.shape[-2:]) for image in images]
        resized_sizes = [self._resized_size(*hw) for hw in orig_sizes]
        batch_height, batch_width = self._batch_size(resized_sizes)
        canvas = torch.zeros(len(images), 3, batch_height, batch_width, dtype=torch.uint8)
        pixel_mask = torch.zeros(len(images), batch_height, batch_width, dtype=torch.long)
        for index, (image, (height, width)) in enumerate(zip(images, resized_sizes)):
            canvas[index, :, :height, :width] = self._resize(image, height, width)
            pixel_mask[index, :height, :width] = 1
        data = {"pixel_values": self._normalize(canvas, pixel_mask), "pixel_mask": pixel_mask}
        if annotations is not None:
            data["labels"] = self._labels(annotations, orig_sizes, resized_sizes)
        return BatchFeature(data=data)

    def _with_settings(self, settings: dict[str, Any]) -> "DeTRLiteImageProcessor":
        """A processor with some settings replaced, validated like any other (for per-call settings)."""
        unknown = sorted(set(settings) - set(DeTRLiteImageProcessorKwargs.__annotations__))
        if unknown:
            raise ValueError(f"DeTRLiteImageProcessor: unknown setting(s) {unknown}; the settings are "
                             f"{sorted(DeTRLiteImageProcessorKwargs.__annotations__)}.")
        current = {key: getattr(self, key) for key in DeTRLiteImageProcessorKwargs.__annotations__
                   if key != "resize_mode"}
        return type(self)(**{**current, **settings})

    def _resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the unpadded resized image."""
        side = self.canvas_size
        if not self.do_resize:
            return height, width
        if self.resize_mode == "stretch":
            return side, side
        scale = side / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def _batch_size(self, resized_sizes: list[tuple[int, int]]) -> tuple[int, int]:
        """(H, W) of the batch: `pad_size`, or without padding the one size every resized image has."""
        if not self.do_pad:
            if len(set(resized_sizes)) > 1:
                raise ValueError(f"With do_pad=False every image must come out of resizing with one size, got "
                                 f"{sorted(set(resized_sizes))}; pass do_pad=True to batch them.")
            return resized_sizes[0]
        pad_size = self.pad_size or {"height": self.canvas_size, "width": self.canvas_size}
        height, width = pad_size["height"], pad_size["width"]
        too_large = [hw for hw in resized_sizes if hw[0] > height or hw[1] > width]
        if too_large:
            raise ValueError(f"Images of (h, w) {too_large} do not fit the padded size {pad_size}; resize them "
                             "(do_resize=True) or pass a larger pad_size.")
        return height, width

    def _resize(self, image: Tensor, height: int, width: int) -> Tensor:
        """(3, H, W) uint8 → (3, height, width) uint8, antialiased when shrinking."""
        if tuple(image.shape[-2:]) == (height, width):
            return image
        mode = _INTERPOLATION[self.resample]
        resized = F.interpolate(image[None], size=(height, width), mode=mode, antialias=mode != "nearest-exact")
        return resized[0]

    def _normalize(self, canvas: Tensor, pixel_mask: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 → float in one batched op: (x * rescale_factor - mean) / std, padding = pad_value."""
        pixels = canvas.float()
        if self.do_rescale:
            pixels = pixels.mul_(self.rescale_factor)
        if self.do_normalize:
            mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
            std = torch.tensor(self.image_std).view(1, 3, 1, 1)
            pixels = pixels.sub_(mean).div_(std)
        return pixels.masked_fill_(pixel_mask[:, None] == 0, self.pad_value)

    def _labels(
        self,
        annotations: Mapping | Sequence[Mapping],
        orig_sizes: list[tuple[int, int]],
        resized_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        annotations = [annotations] if isinstance(annotations, Mapping) else list(annotations)
        if len(annotations) != len(orig_sizes):
            raise ValueError(
                f"Got {len(annotations)} annotation dicts for {len(orig_sizes)} images; pass exactly one "
                "per image (with an empty 'annotations' list for an image without objects)."
            )
        return [self._image_labels(*args) for args in zip(annotations, orig_sizes, resized_sizes)]

    def _image_labels(
        self, target: Mapping, orig_size: tuple[int, int], resized_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """One COCO target → DETR labels (see `preprocess`)."""
        if "image_id" not in target or not _is_int(target["image_id"]):
            raise ValueError(f"Each annotation dict needs an integer 'image_id'; got keys {sorted(target)}.")
        image_id = int(target["image_id"])
        objects = [obj for obj in target.get("annotations", []) if not obj.get("iscrowd", 0)]
        class_labels = torch.tensor([self._class_index(obj.get("category_id"), image_id) for obj in objects])
        corners = _clipped_corners(objects, image_id, orig_size)  # (n, 4) xyxy pixels
        areas = torch.tensor([float(obj.get("area") or math.nan) for obj in objects], dtype=torch.float64)
        areas = torch.where(areas.isnan(), (corners[:, 2:] - corners[:, :2]).prod(-1), areas)
        keep = (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
        height, width = orig_size
        scale = torch.tensor([width, height, width, height], dtype=torch.float64)
        return {
            "class_labels": class_labels.long().reshape(-1)[keep],
            "boxes": (corners_to_center(corners[keep]) / scale).float(),
            "image_id": torch.tensor([image_id]),
            "orig_size": torch.tensor(orig_size),
            "size": torch.tensor(resized_size),
            "area": (areas[keep] * (math.prod(resized_size) / (height * width))).float(),
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.long),
        }

    def _class_index(self, category_id: Any, image_id: int) -> int:
        """Dataset category id → contiguous class index, with errors that say what to do."""
        key = _category_key(category_id)
        if self.label2id is None:
            if not _is_int(key) or key < 0:
                raise ValueError(
                    f"Image {image_id}: category_id {category_id!r} is not a class index 0..K-1. Pass "
                    "label2id={category_id: class_index, ...} to DeTRLiteImageProcessor to map dataset ids."
                )
            return key
        if key not in self.label2id:
            known = sorted(self.label2id, key=str)
            raise ValueError(
                f"Image {image_id}: category_id {category_id!r} is not in label2id (known ids: {known[:20]}"
                f"{' ...' if len(known) > 20 else ''}). Add it to label2id (and the model's id2label) "
                "or remove those annotations from the dataset."
            )
        return self.label2id[key]

    def post_process_object_detection(
        self,
        outputs: Any,
        threshold: float = 0.5,
        target_sizes: Tensor | Sequence[Sequence[int]] | None = None,
        top_k: int | None = None,
    ) -> list[dict[str, Tensor]]:
        """Turn model outputs into scored boxes in the original images' pixels.

        Args:
            outputs: Model output with `logits` (B, Q, C + 1), the last class being no-object, and
                `pred_boxes` (B, Q, 4) as (cx, cy, w, h) normalised to the unpadded resized image
                (attributes or mapping keys).
            threshold: Detections with score <= threshold are dropped.
            target_sizes: (B, 2) tensor or list of B (h, w) of the original images. None keeps the
                boxes normalised to 0..1.
            top_k: If given, keep at most the k best detections per image (after the threshold).

        Returns:
            B dicts, detections sorted by descending score: `scores` float (k,) = the highest
            softmax probability over real classes, `labels` long (k,) the class index, `boxes`
            float (k, 4) as (x0, y0, x1, y1) in original-image pixels (or 0..1), clipped to the image.
        """
        logits, pred_boxes = _output_field(outputs, "logits"), _output_field(outputs, "pred_boxes")
        if top_k is not None and (not _is_int(top_k) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}.")
        scores, labels = logits.float().softmax(-1)[..., :-1].max(-1)  # (B, Q) each
        boxes = center_to_corners(pred_boxes.float()).clamp(0.0, 1.0)  # (B, Q, 4)
        if target_sizes is not None:
            heights, widths = _target_sizes(target_sizes, len(logits)).to(boxes.device).unbind(-1)
            boxes = boxes * torch.stack([widths, heights, widths, heights], -1)[:, None]  # (B, 1, 4)
        results = []
        for image_scores, image_labels, image_boxes in zip(scores, labels, boxes):
            keep = image_scores > threshold
            order = image_scores[keep].argsort(descending=True)[:top_k]
            results.append(
                {
                    "scores": image_scores[keep][order],
                    "labels": image_labels[keep][order],
                    "boxes": image_boxes[keep][order],
                }
            )
        return results


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _channel_constants(field: str, values: Sequence[float]) -> list[float]:
    """Three finite floats, or a ValueError naming the field."""
    try:
        constants = [float(v) for v in values]
    except (TypeError, ValueError):
        constants = []
    if len(constants) != 3 or not all(math.isfinite(v) for v in constants):
        raise ValueError(f"DeTRLiteImageProcessor.{field}: must be 3 finite numbers (R, G, B), got {values!r}.")
    return constants


def _category_key(key: Any) -> Any:
    """Canonical category id: ints stay ints, "12" (a JSON object key) becomes 12, names stay names."""
    if isinstance(key, np.generic | Tensor):
        key = key.item()
    if isinstance(key, str):
        try:
            return int(key) if str(int(key)) == key else key
        except ValueError:
            return key
    return key


def _as_image_list(images: Any) -> list:
    """A single image, a list of images or a 4-D batch → list of images."""
    if isinstance(images, np.ndarray | Tensor) and images.ndim == 4:
        return list(images)
    if isinstance(images, list | tuple):
        return list(images)
    return [images]


def _size_dict(size: Mapping[str, int] | int, resize_mode: str | None) -> dict[str, int]:
    """`size` in one of transformers' forms, or an int with `resize_mode` (older configs) → the dict kept."""
    def fail(field: str, message: str) -> None:
        raise ValueError(f"DeTRLiteImageProcessor.{field}: {message}")

    if resize_mode is not None and resize_mode not in _RESIZE_MODES:
        fail("resize_mode", f"must be one of {_RESIZE_MODES}, got {resize_mode!r}.")
    if _is_int(size):
        size = {"height": size, "width": size} if resize_mode == "stretch" else {"longest_edge": size}
    forms = " or ".join(str(dict.fromkeys(keys, "S")) for keys in _SIZE_FORMS)
    if not isinstance(size, Mapping) or tuple(sorted(size)) not in {tuple(sorted(k)) for k in _SIZE_FORMS}:
        fail("size", f"must be {forms} (S >= {_MIN_SIZE}), or an int S; got {size!r}.")
    keys = next(keys for keys in _SIZE_FORMS if set(keys) == set(size))
    values = {size[key] for key in keys}
    if not all(_is_int(value) and value >= _MIN_SIZE for value in values) or len(values) > 1:
        fail("size", f"the canvas is square: must be {forms} with one integer S >= {_MIN_SIZE} (the backbone "
             f"stride), got {size!r}.")
    if resize_mode is not None and _SIZE_FORMS[keys] != resize_mode:
        fail("resize_mode", f"{resize_mode!r} contradicts size {size!r}; give the size alone.")
    return {key: size[key] for key in keys}


def _open_image(source: str | os.PathLike) -> Image.Image:
    """A file path or an http(s) URL → PIL image, or a ValueError naming the source."""
    text = os.fspath(source)
    if text.startswith(("http://", "https://")):
        try:
            return load_image(text, timeout=_URL_TIMEOUT_S)
        except Exception as error:  # no network, refused, not found, not an image: all mean "cannot read it"
            raise ValueError(f"Cannot fetch the image {text} ({type(error).__name__}: {error}).") from error
    try:
        image = Image.open(text)
        image.load()
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read the image file {text} ({error}).") from error
    return image


def _to_rgb_uint8(image: ImageLike) -> Tensor:
    """Any supported image → (3, H, W) uint8 tensor (possibly a channels-last view)."""
    if isinstance(image, str | os.PathLike):
        image = _open_image(image)
    if isinstance(image, Image.Image):
        array, channels_first = _pil_to_array(image), False
    elif isinstance(image, Tensor):
        image = image.detach().cpu()
        array, channels_first = (image.float() if image.dtype == torch.bfloat16 else image).numpy(), True
    elif isinstance(image, np.ndarray):
        array, channels_first = image, False
    else:
        raise ValueError(f"Images must be PIL images, numpy arrays, torch tensors, file paths or URLs, got "
                         f"{type(image).__name__}.")
    chw = _channels_first(torch.from_numpy(_array_to_uint8(array)), channels_first)
    return chw[:3] if chw.shape[0] >= 3 else chw[:1].expand(3, -1, -1)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """PIL image of any mode → uint8 (H, W) or (H, W, 3) array, EXIF orientation applied."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):
        values = np.asarray(image).astype(np.float64)
        fits_16_bit = image.mode != "I" or (values.min() >= 0 and values.max() <= 65535)
        return np.round(np.clip(values * (255 / (65535 if fits_16_bit else 2**31 - 1)), 0, 255)).astype(np.uint8)
    if image.mode == "F":
        return np.round(np.clip(np.asarray(image), 0, 255)).astype(np.uint8)
    if image.mode in _CONVERT_VIA:
        image = image.convert(_CONVERT_VIA[image.mode])
    return np.array(image.convert("RGB"))


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 as is; float 0..1, uint16 0..65535, bool and other integers (0..255) scaled to uint8."""
    if array.dtype == np.uint8:
        return array if array.flags.writeable else array.copy()
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        return np.round(np.clip(array.astype(np.float32, copy=False), 0.0, 1.0) * 255).astype(np.uint8)
    if array.dtype == np.uint16:
        return np.round(array / 257).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    raise ValueError(f"Unsupported image dtype {array.dtype}: use uint8, uint16, bool or float in 0..1.")


def _channels_first(image: Tensor, prefer_channels_first: bool) -> Tensor:
    """(H, W), (H, W, C) or (C, H, W) → (C, H, W); ambiguous shapes follow the input type's habit."""
    if image.ndim == 2:
        return image[None]
    if image.ndim == 3:
        first, last = image.shape[0] in _CHANNEL_COUNTS, image.shape[-1] in _CHANNEL_COUNTS
        if first and (prefer_channels_first or not last):
            return image
        if last:
            return image.permute(2, 0, 1)
    raise ValueError(
        f"Cannot read an image of shape {tuple(image.shape)}: expected (H, W), (H, W, C) or (C, H, W) with C in 1..4."
    )


def _clipped_corners(objects: list[Mapping], image_id: int, orig_size: tuple[int, int]) -> Tensor:
    """COCO [x, y, w, h] boxes → (n, 4) float64 xyxy clipped to the image."""
    if not objects:
        return torch.zeros(0, 4, dtype=torch.float64)
    try:
        boxes = torch.tensor([obj["bbox"] for obj in objects], dtype=torch.float64)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"Image {image_id}: every annotation needs 'bbox': [x, y, w, h] numbers ({error}).") from None
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.isfinite().all():
        raise ValueError(f"Image {image_id}: a bbox is not 4 finite numbers [x, y, w, h]; fix the annotation file.")
    height, width = orig_size
    corners = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)
    return torch.minimum(corners.clamp(min=0), torch.tensor([width, height, width, height], dtype=torch.float64))


def _output_field(outputs: Any, name: str) -> Tensor:
    return outputs[name] if isinstance(outputs, Mapping) else getattr(outputs, name)


def _target_sizes(target_sizes: Tensor | Sequence[Sequence[int]], batch_size: int) -> Tensor:
    """(B, 2) tensor or list of (h, w) → (B, 2) float tensor."""
    if isinstance(target_sizes, Tensor):
        sizes = target_sizes.float()
    else:
        sizes = torch.stack([torch.as_tensor(hw, dtype=torch.float32).reshape(-1) for hw in target_sizes])
    if sizes.shape != (batch_size, 2):
        raise ValueError(
            f"target_sizes must hold one (height, width) per image: expected shape ({batch_size}, 2), "
            f"got {tuple(sizes.shape)}."
        )
    return sizes
