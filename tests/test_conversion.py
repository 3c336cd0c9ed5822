"""Checkpoint conversion: transformers' DetrForObjectDetection and official DETR weights give the same outputs
in DeTR-Lite."""

import re

import pytest
import torch
from transformers import DetrConfig, DetrForObjectDetection

from detr_lite import DeTRLiteForObjectDetection
from detr_lite.conversion import convert_checkpoint


def hf_detr(num_labels: int = 3) -> DetrForObjectDetection:
    """A small random transformers DETR with a timm backbone; norms perturbed so they are not identities."""
    torch.manual_seed(0)
    # transformers 5.x's decoder feeds the layer-normed state to the next layer when auxiliary_loss=True, unlike
    # the official DETR; DeTR-Lite follows the official model, so parity is checked with auxiliary_loss off.
    config = DetrConfig(
        backbone="resnet18", d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5, num_labels=num_labels,
        auxiliary_loss=False,
    )
    model = DetrForObjectDetection(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.add_(torch.randn_like(parameter) * 0.3)
        for name, buffer in model.named_buffers():  # frozen BN statistics, so the backbone is not trivial
            if name.endswith(("running_mean", "bias")):
                buffer.add_(torch.randn_like(buffer) * 0.1)
    return model


def batch_with_padding():
    torch.manual_seed(1)
    pixel_values = torch.randn(2, 3, 128, 160)
    pixel_mask = torch.ones(2, 128, 160, dtype=torch.long)
    pixel_mask[1, 96:, :] = 0
    pixel_mask[1, :, 100:] = 0
    return pixel_values, pixel_mask


def assert_same_predictions(reference, converted: DeTRLiteForObjectDetection) -> None:
    pixel_values, pixel_mask = batch_with_padding()
    with torch.no_grad():
        expected = reference(pixel_values=pixel_values, pixel_mask=pixel_mask)
        actual = converted(pixel_values, pixel_mask)
    assert (expected.logits - actual.logits).abs().max() <= 1e-4
    assert (expected.pred_boxes - actual.pred_boxes).abs().max() <= 1e-4


def test_hf_checkpoint_gives_the_same_outputs(tmp_path):
    reference = hf_detr()
    reference.save_pretrained(tmp_path / "hf")
    converted = convert_checkpoint("hf", tmp_path / "hf")
    assert converted.config.num_labels == 3 and converted.config.num_queries == 5
    assert converted.config.backbone == "resnet18"
    assert_same_predictions(reference, converted)


def to_official_state_dict(model: DetrForObjectDetection) -> dict[str, torch.Tensor]:
    """Written independently of the converter: transformers' names -> facebookresearch/detr's names."""
    renames = [
        (r"^model\.backbone\.model\.", "backbone.0.body."),
        (r"^model\.input_projection\.", "input_proj."),
        (r"^model\.query_position_embeddings\.", "query_embed."),
        (r"^model\.decoder\.layernorm\.", "transformer.decoder.norm."),
        (r"^model\.(encoder|decoder)\.", r"transformer.\1."),
        (r"\.encoder_attn_layer_norm\.", ".norm2."),
        (r"\.encoder_attn\.", ".multihead_attn."),
        (r"\.self_attn_layer_norm\.", ".norm1."),
        (r"\.mlp\.fc(\d)\.", r".linear\1."),
        (r"\.o_proj\.", ".out_proj."),
        (r"^class_labels_classifier\.", "class_embed."),
        (r"^bbox_predictor\.", "bbox_embed."),
    ]
    official = {}
    for key, tensor in model.state_dict().items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        if ".final_layer_norm." in key:
            key = key.replace(".final_layer_norm.", ".norm3." if ".decoder." in key else ".norm2.")
        official[key] = tensor
    for key in [k for k in official if ".q_proj." in k]:  # nn.MultiheadAttention stacks q, k, v
        prefix, kind = key.split(".q_proj.")
        parts = [official.pop(f"{prefix}.{name}.{kind}") for name in ("q_proj", "k_proj", "v_proj")]
        official[f"{prefix}.in_proj_{kind}"] = torch.cat(parts)
    return official


def test_official_checkpoint_gives_the_same_outputs(tmp_path):
    reference = hf_detr(num_labels=91)
    path = tmp_path / "detr-official.pth"
    torch.save({"model": to_official_state_dict(reference), "args": None}, path)
    converted = convert_checkpoint("official", path, num_heads=4, backbone="resnet18")
    assert converted.config.num_labels == 91
    assert converted.config.id2label[1] == "person" and converted.config.id2label[18] == "dog"
    assert converted.config.encoder_layers == 2 and converted.config.decoder_layers == 3
    assert_same_predictions(reference, converted)


def test_official_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"model": {}, "args": object()}, path)  # arbitrary objects need a full unpickle
    with pytest.raises(Exception, match="[Ww]eights only"):
        convert_checkpoint("official", path)


def test_wrong_architecture_is_reported(tmp_path):
    reference = hf_detr()
    path = tmp_path / "detr.pth"
    torch.save({"model": to_official_state_dict(reference)}, path)
    with pytest.raises(ValueError, match="heads|does not match"):
        convert_checkpoint("official", path, num_heads=4, backbone="resnet50")


def test_convert_script_writes_a_loadable_folder(tmp_path):
    pytest.importorskip("detr_lite.image_processing_detr_lite")
    from scripts_helpers import run_script

    reference = hf_detr()
    reference.save_pretrained(tmp_path / "hf")
    run_script("convert_detr_checkpoint.py", "--source", "hf", "--checkpoint", str(tmp_path / "hf"),
               "--output_dir", str(tmp_path / "out"))
    loaded = DeTRLiteForObjectDetection.from_pretrained(tmp_path / "out").eval()
    assert_same_predictions(reference, loaded)
    assert (tmp_path / "out" / "preprocessor_config.json").is_file()
