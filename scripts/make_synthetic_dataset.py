"""Write DeTR-Lite's built-in synthetic shapes dataset (COCO layout) to a folder.

    python scripts/make_synthetic_dataset.py --output_dir data/synthetic
    python scripts/run_detection.py --data_dir data/synthetic --train_split train --val_split val

The same seed always gives the same files; a folder that already holds the same set is reused.
"""

import argparse
import time

from detr_lite.data.synthetic import SHAPE_CLASSES, make_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="folder for annotations/, train/, val/")
    parser.add_argument("--num_train", type=int, default=2000, help="training images (default 2000)")
    parser.add_argument("--num_val", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        root = make_synthetic_dataset(args.output_dir, args.num_train, args.num_val, args.seed, progress=True)
    except ValueError as error:
        parser.error(str(error))
    print(f"Synthetic shapes ({', '.join(SHAPE_CLASSES)}) ready in {root.resolve()} "
          f"({time.perf_counter() - start:.1f} s)")
    for split in ("train", "val"):
        print(f"  {split}: images in {root / split}, annotations in {root / 'annotations' / f'instances_{split}.json'}")


if __name__ == "__main__":
    main()
