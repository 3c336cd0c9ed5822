"""Convert a DETR checkpoint (transformers folder or official .pth) into a DeTR-Lite model folder.

    python scripts/convert_detr_checkpoint.py --source official --checkpoint detr-r50-e632da11.pth --output_dir detr-r50
    python scripts/convert_detr_checkpoint.py --source hf --checkpoint path/to/detr-resnet-50 --output_dir detr-r50
"""

import argparse

from detr_lite.conversion import convert_checkpoint
from detr_lite.image_processing_detr_lite import DeTRLiteImageProcessor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("hf", "official"), required=True)
    parser.add_argument("--checkpoint", required=True, help="transformers model folder, or official .pth file")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_heads", type=int, default=8, help="official only: attention heads")
    parser.add_argument("--dilation", action="store_true", help="official only: a DC5 checkpoint")
    parser.add_argument("--backbone", default="resnet50", help="official only: timm name of the ResNet")
    args = parser.parse_args(argv)
    model = convert_checkpoint(
        args.source, args.checkpoint, num_heads=args.num_heads, dilation=args.dilation, backbone=args.backbone
    )
    model.save_pretrained(args.output_dir)
    DeTRLiteImageProcessor(size={"longest_edge": model.config.image_size}).save_pretrained(args.output_dir)
    print(f"Saved DeTR-Lite model ({model.config.num_labels} classes) to {args.output_dir}")


if __name__ == "__main__":
    main()
