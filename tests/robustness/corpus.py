"""The robustness corpus: small broken (and awkward but valid) files, written into a test's tmp_path.

Each `write_*` function writes one file and returns its path; the COCO and VOC builders write whole
tiny datasets whose annotations the tests corrupt.
"""

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8 random pixels: any change in decoding shows."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


# ---------------------------------------------------------------- unreadable images


def write_good_jpeg(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    return _write(path, _encoded(Image.fromarray(noise(*size, seed)), "JPEG", quality=95))


def write_empty(path: Path) -> Path:
    return _write(path, b"")


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in the middle of its scan data: the header reads, decoding fails."""
    data = _encoded(Image.fromarray(noise(64, 48)), "JPEG", quality=95)
    return _write(path, data[: len(data) // 2])


def write_text_as_jpeg(path: Path) -> Path:
    return _write(path, b"this is a text file with a .jpg name\n")


def write_nothing(path: Path) -> Path:
    """A missing file: its path, and nothing on disk."""
    return path


# name → (writer, a fragment of the message that names the cause)
UNREADABLE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty.jpg": (write_empty, "the file is empty (0 bytes)"),
    "truncated.jpg": (write_truncated_jpeg, "image file is truncated"),
    "not_an_image.jpg": (write_text_as_jpeg, "cannot identify image file"),
    "missing.jpg": (write_nothing, "file not found"),
}

# ---------------------------------------------------------------- awkward but valid images


def write_16bit_png(path: Path) -> tuple[Path, np.ndarray]:
    """A 16-bit gray PNG and the 8-bit RGB it should load as (value / 257, not clipped to 255)."""
    gray = noise(32, 20)[..., 0]
    return _write(path, _encoded(Image.fromarray(gray.astype(np.uint16) * 257), "PNG")), np.stack([gray] * 3, -1)


def write_cmyk_tiff(path: Path) -> tuple[Path, np.ndarray]:
    rgb = noise(32, 20)
    return _write(path, _encoded(Image.fromarray(rgb).convert("CMYK"), "TIFF")), rgb


def write_palette_png_with_transparency(path: Path) -> tuple[Path, np.ndarray]:
    palette = Image.fromarray(noise(32, 20)).quantize(64)
    expected = np.asarray(palette.convert("RGB"))
    return _write(path, _encoded(palette, "PNG", transparency=bytes(range(64)))), expected


def write_rgba_png(path: Path) -> tuple[Path, np.ndarray]:
    rgb = noise(32, 20)
    image = Image.fromarray(rgb)
    image.putalpha(Image.fromarray(noise(32, 20, seed=1)[..., 0]))
    return _write(path, _encoded(image, "PNG")), rgb  # alpha dropped, not composited


def write_exif_rotated_png(path: Path) -> tuple[Path, np.ndarray]:
    """Stored 32 wide x 20 tall with EXIF orientation 6: shown upright rotated 90° clockwise (20 x 32)."""
    rgb = noise(32, 20)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _write(path, _encoded(Image.fromarray(rgb), "PNG", exif=exif)), np.rot90(rgb, k=-1)


VALID_MODES = {
    "16bit.png": write_16bit_png,
    "cmyk.tiff": write_cmyk_tiff,
    "palette_transparency.png": write_palette_png_with_transparency,
    "rgba.png": write_rgba_png,
    "exif_rotated.png": write_exif_rotated_png,
}

# ---------------------------------------------------------------- datasets


CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]


def write_coco(
    root: Path,
    images: list[dict],
    annotations: list[dict],
    split: str = "train",
    categories: list[dict] = CATEGORIES,
) -> Path:
    """A COCO-layout split; every listed image is a readable 40x30 JPEG unless a test overwrites it."""
    for index, image in enumerate(images):
        if "file_name" in image:
            write_good_jpeg(root / split / image["file_name"], seed=index)
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def coco_image(image_id: int, file_name: str | None = None) -> dict:
    return {"id": image_id, "file_name": file_name or f"{image_id}.jpg", "width": 40, "height": 30}


def coco_box(ann_id: int, image_id: int, bbox: list, category_id: int = 1) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0}


VOC_XML = ("<annotation><filename>{stem}.jpg</filename><size><width>40</width><height>30</height></size>"
           "{objects}</annotation>")
VOC_OBJECT = ("<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>2</ymin><xmax>20</xmax><ymax>20</ymax>"
              "</bndbox></object>")


def write_voc(root: Path, xml: dict[str, str], split_lines: list[str], split: str = "train") -> Path:
    """A VOC split whose annotation files have the given raw XML texts (stem → text)."""
    for index, (stem, text) in enumerate(xml.items()):
        write_good_jpeg(root / "JPEGImages" / f"{stem}.jpg", seed=index)
        _write(root / "Annotations" / f"{stem}.xml", text.encode())
    return _write(root / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{line}\n" for line in split_lines).encode())


def voc_xml(stem: str, *xmins: str, name: str = "cat") -> str:
    """A well-formed VOC XML with one object per ``xmin`` text (a number, or something malformed)."""
    return VOC_XML.format(stem=stem, objects="".join(VOC_OBJECT.format(name=name, x0=x0) for x0 in xmins))
