"""Convert DETR checkpoints into DeTR-Lite: from transformers' `DetrForObjectDetection` folders
(timm backbone) and from the official facebookresearch/detr `.pth` files.

Both are key renames: the tensor math is the same, so converted weights give the same outputs.
"""

import json
import re
from pathlib import Path

import torch

from .configuration_detr_lite import DeTRLiteConfig
from .modeling_detr_lite import DeTRLiteForObjectDetection

# transformers' DETR (v4 and v5 namings) -> DeTR-Lite. Applied in order, first match wins per rule list.
_HF_RULES = [
    (r"^model\.backbone\.(?:conv_encoder\.)?model\.", "model.backbone.body."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.encoder_attn_layer_norm\.", ".norm2."),
    (r"\.o_proj\.", ".out_proj."),
    (r"\.(?:mlp\.)?fc1\.", ".ffn.linear1."),
    (r"\.(?:mlp\.)?fc2\.", ".ffn.linear2."),
    (r"\.self_attn_layer_norm\.", ".norm1."),
    (r"^model\.decoder\.layernorm\.", "model.decoder.norm."),
]

# Official DETR -> DeTR-Lite; attention in_proj tensors are split separately.
_OFFICIAL_RULES = [
    (r"^backbone\.0\.body\.", "model.backbone.body."),
    (r"^input_proj\.", "model.input_projection."),
    (r"^query_embed\.", "model.query_position_embeddings."),
    (r"^transformer\.", "model."),
    (r"\.multihead_attn\.", ".cross_attn."),
    (r"\.linear([12])\.", r".ffn.linear\1."),
    (r"^class_embed\.", "class_labels_classifier."),
    (r"^bbox_embed\.", "bbox_predictor."),
]

COCO_91_NAMES = [
    "N/A", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop",
    "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def _decoder_norm_rename(key: str) -> str:
    # In transformers' decoder layers `final_layer_norm` is the third norm; in its encoder layers the second.
    if ".decoder.layers." in key:
        return key.replace(".final_layer_norm.", ".norm3.")
    return key.replace(".final_layer_norm.", ".norm2.")


def convert_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers `DetrForObjectDetection` state dict to DeTR-Lite's names."""
    converted = {}
    for key, tensor in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        converted[_decoder_norm_rename(_rename(key, _HF_RULES))] = tensor
    return converted


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official DETR state dict (`checkpoint["model"]`) to DeTR-Lite's names.

    PyTorch's `nn.MultiheadAttention` stores q, k and v projections stacked in `in_proj_weight` (3D, D):
    they are split into DeTR-Lite's separate projections.
    """
    converted = {}
    for key, tensor in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        new_key = _rename(key, _OFFICIAL_RULES)
        match = re.match(r"(.*)\.in_proj_(weight|bias)$", new_key)
        if match:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                converted[f"{match.group(1)}.{name}.{match.group(2)}"] = part.clone()
        else:
            converted[new_key] = tensor
    return converted


def _count_layers(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(indices) + 1 if indices else 0


def config_from_hf(hf_config: dict) -> DeTRLiteConfig:
    """A DeTR-Lite config with the architecture of a transformers DETR `config.json` (as a dict)."""
    backbone_config = hf_config.get("backbone_config") or {}
    backbone = backbone_config.get("backbone") or hf_config.get("backbone") or "resnet50"
    if backbone_config and backbone_config.get("model_type") not in (None, "timm_backbone"):
        raise ValueError(
            f"Only DETR checkpoints with a timm backbone can be converted; this one uses "
            f"{backbone_config.get('model_type')!r}."
        )
    id2label = hf_config.get("id2label") or {i: f"LABEL_{i}" for i in range(hf_config.get("num_labels", 91))}
    keys = (
        "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
        "encoder_ffn_dim", "decoder_ffn_dim", "dropout", "attention_dropout", "activation_dropout",
        "activation_function", "num_queries", "class_cost", "bbox_cost", "giou_cost",
        "bbox_loss_coefficient", "giou_loss_coefficient", "eos_coefficient", "dilation",
    )
    kwargs = {key: hf_config[key] for key in keys if hf_config.get(key) is not None}
    return DeTRLiteConfig(backbone=backbone, id2label={int(k): v for k, v in id2label.items()}, **kwargs)


def config_from_official(state_dict: dict[str, torch.Tensor], num_heads: int = 8, dilation: bool = False,
                         backbone: str = "resnet50") -> DeTRLiteConfig:
    """Infer the architecture from an official DETR state dict (heads and dilation are not in the weights)."""
    num_labels = state_dict["class_embed.weight"].shape[0] - 1
    names = COCO_91_NAMES if num_labels == len(COCO_91_NAMES) else [f"LABEL_{i}" for i in range(num_labels)]
    return DeTRLiteConfig(
        backbone=backbone,
        dilation=dilation,
        d_model=state_dict["input_proj.weight"].shape[0],
        num_queries=state_dict["query_embed.weight"].shape[0],
        encoder_layers=_count_layers(state_dict, "transformer.encoder.layers."),
        decoder_layers=_count_layers(state_dict, "transformer.decoder.layers."),
        encoder_attention_heads=num_heads,
        decoder_attention_heads=num_heads,
        encoder_ffn_dim=state_dict["transformer.encoder.layers.0.linear1.weight"].shape[0],
        decoder_ffn_dim=state_dict["transformer.decoder.layers.0.linear1.weight"].shape[0],
        pre_norm="transformer.encoder.norm.weight" in state_dict,
        id2label=dict(enumerate(names)),
    )


def _load_into_model(config: DeTRLiteConfig, state_dict: dict[str, torch.Tensor]) -> DeTRLiteForObjectDetection:
    model = DeTRLiteForObjectDetection(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"The checkpoint does not match the DeTR-Lite architecture {config.backbone!r} with "
            f"{config.encoder_attention_heads} heads: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {mismatched[:5]}. Check --source, --backbone, --num_heads and --dilation."
        )
    model.load_state_dict(state_dict)
    return model.eval()


def convert_checkpoint(source: str, checkpoint: str | Path, num_heads: int = 8, dilation: bool = False,
                       backbone: str = "resnet50") -> DeTRLiteForObjectDetection:
    """Build a DeTR-Lite model holding a DETR checkpoint's weights.

    Args:
        source: "hf" for a folder saved by `transformers.DetrForObjectDetection` (timm backbone),
            "official" for a facebookresearch/detr `.pth` file.
        checkpoint: that folder or file.
        num_heads, dilation, backbone: for "official" only, which does not record them.

    Returns:
        The converted model in eval mode.
    """
    path = Path(checkpoint)
    if source == "hf":
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a transformers model folder: it has no config.json.")
        from transformers import DetrForObjectDetection

        hf_config = json.loads((path / "config.json").read_text())
        hf_model = DetrForObjectDetection.from_pretrained(path)
        return _load_into_model(config_from_hf(hf_config), convert_hf_state_dict(hf_model.state_dict()))
    if source == "official":
        if not path.is_file():
            raise ValueError(f"Official DETR checkpoint {path} does not exist.")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        state_dict = loaded.get("model", loaded)
        config = config_from_official(state_dict, num_heads=num_heads, dilation=dilation, backbone=backbone)
        return _load_into_model(config, convert_official_state_dict(state_dict))
    raise ValueError(f"source must be 'hf' or 'official', got {source!r}.")
