"""Check a dataset before training: every annotation problem and every image that does not decode, at once.

    python scripts/validate_dataset.py --data_dir data/coco                       # every split
    python scripts/validate_dataset.py --data_dir data/voc --split train val --output report.json

Each problem is listed as `file: field: message (action)`, where the action is what training does about it
(clipped, dropped, skipped, or rejected: training refuses the split until it is fixed; see
detr_lite/data/problems.py). Then a table counts them per split. Exit status: 0 when the dataset is clean,
1 when there is any problem, 2 when the folder or a split is not found.
"""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from detr_lite.data import DataProblem, available_splits, find_problems
from detr_lite.data.problems import count_actions

ACTIONS = ("clipped", "dropped", "skipped", "rejected")


def summary_table(problems_by_split: dict[str, list[DataProblem]]) -> str:
    """One row per split, one column per action, and a total column."""
    width = max(len("split"), *(len(split) for split in problems_by_split))
    rows = [f"{'split':<{width}}" + "".join(f"{action:>10}" for action in (*ACTIONS, "total"))]
    for split, problems in problems_by_split.items():
        counts = count_actions(problems)
        rows.append(f"{split:<{width}}" + "".join(f"{counts.get(action, 0):>10}" for action in ACTIONS)
                    + f"{len(problems):>10}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="dataset folder (COCO, VOC or Hugging Face layout)")
    parser.add_argument("--split", nargs="+", help="splits to check (default: every split)")
    parser.add_argument("--output", type=Path, help="also write the report as JSON here")
    parser.add_argument("--max_image_pixels", type=int, default=Image.MAX_IMAGE_PIXELS,
                        help=f"as run_detection.py: larger images are problems (default {Image.MAX_IMAGE_PIXELS:,})")
    args = parser.parse_args(argv)
    Image.MAX_IMAGE_PIXELS = args.max_image_pixels or None
    try:
        splits = args.split or available_splits(args.data_dir)
        problems_by_split: dict[str, list[DataProblem]] = {}
        seen: set[DataProblem] = set()  # a VOC XML is read for every split: report its problems once
        for split in splits:
            problems_by_split[split] = [problem for problem in find_problems(args.data_dir, split)
                                        if problem not in seen]
            seen.update(problems_by_split[split])
    except ValueError as error:  # no recognised layout, or no such split
        parser.error(str(error))
    for split, problems in problems_by_split.items():
        for problem in problems:
            print(f"[{split}] {problem} ({problem.action})")
    print(("\n" if seen else "") + summary_table(problems_by_split))
    print(f"\n{len(seen)} problem(s) in {args.data_dir}." if seen else f"\n{args.data_dir} is clean.")
    if args.output:
        report = {"data_dir": str(args.data_dir),
                  "splits": {split: {"counts": count_actions(problems), "problems": [asdict(p) for p in problems]}
                             for split, problems in problems_by_split.items()}}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
        print(f"Report written to {args.output}", file=sys.stderr)
    return 1 if seen else 0


if __name__ == "__main__":
    sys.exit(main())
