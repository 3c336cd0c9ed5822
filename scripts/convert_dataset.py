"""Convert a detection dataset between the COCO, Pascal VOC and Hugging Face layouts.

    python scripts/convert_dataset.py --data_dir data/voc --output_dir data/voc_coco --to coco
    python scripts/convert_dataset.py --data_dir data/coco --output_dir data/coco_hf --to hf --splits train2017 val2017

The source layout is recognised automatically (as `--data_dir` is everywhere else); every split is
converted unless --splits names some. Images are copied unchanged. VOC stores integer corners, so
boxes converted to VOC move by less than a pixel; see detr_lite/data/writers.py for each layout's
conventions.
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local folders only: never wait on the Hub

from detr_lite.data import WRITERS, available_splits, load_detection_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="source dataset folder (COCO, VOC or Hugging Face layout)")
    parser.add_argument("--output_dir", required=True, help="new folder to write; must not exist or be empty")
    parser.add_argument("--to", choices=sorted(WRITERS), required=True, help="layout to write")
    parser.add_argument("--splits", nargs="+", help="splits to convert (default: all)")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise SystemExit(f"--output_dir {output_dir} is not empty; choose a new folder.")
    try:
        names = args.splits or available_splits(args.data_dir)
        splits = {split: load_detection_dataset(args.data_dir, split) for split in names}
        WRITERS[args.to](splits, output_dir)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    for split, dataset in splits.items():
        boxes = sum(len(record.boxes) for record in dataset.records)
        dropped = f", {dataset.num_dropped_boxes} empty boxes dropped" if dataset.num_dropped_boxes else ""
        print(f"{split}: {len(dataset)} images, {boxes} boxes, {len(dataset.id2label)} classes{dropped}")
    print(f"Wrote {args.to} dataset to {output_dir}")


if __name__ == "__main__":
    main()
