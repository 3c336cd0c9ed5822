"""DeTRLiteConfig: validation, presets and round trips."""

import json
from pathlib import Path

import pytest

from detr_lite import DeTRLiteConfig

PRESETS = Path(__file__).resolve().parents[1] / "configuration"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"d_model": 250}, "encoder_attention_heads"),
        ({"decoder_attention_heads": 3}, "decoder_attention_heads"),
        ({"num_queries": 0}, "num_queries"),
        ({"backbone": "not_a_timm_model"}, "backbone"),
        ({"dropout": 1.5}, "dropout"),
        ({"activation_function": "tanh"}, "activation_function"),
        ({"eos_coefficient": -0.1}, "eos_coefficient"),
        ({"class_cost": 0, "bbox_cost": 0, "giou_cost": 0}, "class_cost"),
        ({"image_size": 650}, "image_size"),
        ({"decoder_layers": 0}, "decoder_layers"),
        ({"encoder_layers": -1}, "encoder_layers"),
        ({"box_refinement": "yes"}, "box_refinement"),
        ({"pre_norm": 1}, "pre_norm"),
        ({"init_xavier_std": 0}, "init_xavier_std"),
        ({"backbone_weights_file": 3}, "backbone_weights_file"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"DeTRLiteConfig.{field}"):
        DeTRLiteConfig(**overrides)


def test_defaults_are_detr_r50():
    config = DeTRLiteConfig()
    assert (config.backbone, config.d_model, config.encoder_layers, config.decoder_layers) == ("resnet50", 256, 6, 6)
    assert (config.num_queries, config.image_size, config.eos_coefficient) == (100, 640, 0.1)
    assert config.hidden_size == 256 and config.num_attention_heads == 8


def test_label_maps_and_json_round_trip(tmp_path):
    config = DeTRLiteConfig(id2label={0: "cat", 1: "dog"}, num_queries=7)
    assert config.num_labels == 2 and config.label2id == {"cat": 0, "dog": 1}
    config.save_pretrained(tmp_path)
    loaded = DeTRLiteConfig.from_pretrained(tmp_path)
    assert loaded.id2label == {0: "cat", 1: "dog"} and loaded.num_queries == 7
    assert loaded.to_dict() == config.to_dict()


def test_invalid_json_config_is_rejected_on_load(tmp_path):
    DeTRLiteConfig().save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["encoder_attention_heads"] = 7
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="divisible"):
        DeTRLiteConfig.from_pretrained(tmp_path)


def test_r50_preset_is_the_documented_default():
    preset = json.loads((PRESETS / "detr_lite_r50.json").read_text())
    config = DeTRLiteConfig(**preset["model"])
    defaults = DeTRLiteConfig()
    for field in ("backbone", "d_model", "encoder_layers", "decoder_layers", "encoder_ffn_dim", "num_queries",
                  "dropout", "auxiliary_loss", "image_size", "eos_coefficient"):
        assert getattr(config, field) == getattr(defaults, field), field
    assert preset["training"]["learning_rate"] == 1e-4 and preset["training"]["backbone_learning_rate"] == 1e-5
    assert preset["training"]["max_grad_norm"] == 0.1 and preset["training"]["weight_decay"] == 1e-4


@pytest.mark.parametrize("name", ["accelerate_cpu_2proc", "accelerate_1gpu", "accelerate_multigpu",
                                  "accelerate_multinode"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(PRESETS / f"{name}.yaml"))
    assert config.num_processes >= 1 and config.num_machines >= 1


def test_quickstart_preset_builds_a_valid_model_config():
    preset = json.loads((PRESETS / "detr_lite_quickstart.json").read_text())
    config = DeTRLiteConfig(**preset["model"])
    assert not config.use_pretrained_backbone and not config.freeze_batch_norm  # trains from scratch offline
    assert config.image_size % 32 == 0


def test_every_field_is_declared_with_a_default_and_a_one_line_comment():
    """Each field of the class body carries its why; box_refinement (read by the model and the card) is one."""
    import dataclasses
    import inspect

    from detr_lite import configuration_detr_lite

    own = [f for f in dataclasses.fields(DeTRLiteConfig) if f.name in DeTRLiteConfig.__annotations__]
    assert "box_refinement" in {f.name for f in own} and DeTRLiteConfig().box_refinement is False
    source = inspect.getsource(configuration_detr_lite.DeTRLiteConfig).splitlines()
    for field in own:
        line = next(index for index, text in enumerate(source) if text.strip().startswith(f"{field.name}:"))
        assert "#" in source[line] or source[line - 1].strip().startswith("#"), field.name


def test_encoder_queries_without_box_refinement_run_forward():
    """Regression: box_refinement was read by the model without being a declared field (AttributeError)."""
    import torch
    from conftest import tiny_config

    from detr_lite import DeTRLiteForObjectDetection

    config = tiny_config(query_source="encoder")
    assert config.box_refinement is False
    with torch.no_grad():
        outputs = DeTRLiteForObjectDetection(config).eval()(torch.zeros(1, 3, 128, 128))
    assert outputs.pred_boxes.shape == (1, 16, 4)
