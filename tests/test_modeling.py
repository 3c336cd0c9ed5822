"""DeTRLiteModel / DeTRLiteForObjectDetection: shapes, attention paths, loss wiring, backbone freezing,
save/load, the Auto classes and remote-code loading."""

import json
import subprocess
import sys
import textwrap
import time

import pytest
import timm
import torch
from conftest import random_labels, tiny_config
from safetensors.torch import save_file
from torchvision.ops.misc import FrozenBatchNorm2d
from transformers import AutoConfig, AutoModel, AutoModelForObjectDetection

from detr_lite import DeTRLiteConfig, DeTRLiteForObjectDetection, DeTRLiteModel
from detr_lite.modeling_detr_lite import mask_if_padded, sine_position_embedding


def padded_batch(batch: int = 2, size: int = 128):
    torch.manual_seed(1)
    pixel_values = torch.randn(batch, 3, size, size)
    pixel_mask = torch.ones(batch, size, size, dtype=torch.long)
    pixel_mask[-1, size * 3 // 4:, :] = 0  # last image: letterboxed wide image, padding at the bottom
    pixel_values[-1, :, size * 3 // 4:, :] = 0
    return pixel_values, pixel_mask


def test_output_shapes(tiny_model):
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        out = tiny_model(pixel_values, pixel_mask)
    config = tiny_model.config
    assert out.logits.shape == (2, config.num_queries, config.num_labels + 1)
    assert out.pred_boxes.shape == (2, config.num_queries, 4)
    assert out.pred_boxes.min() >= 0 and out.pred_boxes.max() <= 1
    assert out.encoder_last_hidden_state.shape == (2, (128 // 32) ** 2, config.d_model)
    assert out.loss is None and out.loss_dict is None and out.cross_attentions is None


def test_eager_attention_matches_sdpa_and_respects_padding(tiny_model):
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        fused = tiny_model(pixel_values, pixel_mask)
        eager = tiny_model(pixel_values, pixel_mask, output_attentions=True)
    torch.testing.assert_close(fused.logits, eager.logits, atol=1e-5, rtol=1e-5)
    assert len(eager.cross_attentions) == tiny_model.config.decoder_layers
    weights = eager.cross_attentions[-1]  # (B, heads, Q, HW)
    assert weights.shape == (2, 4, tiny_model.config.num_queries, 16)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    padded_tokens = ~eager.feature_mask[-1].flatten()
    assert padded_tokens.any()
    assert weights[-1][..., padded_tokens].abs().max() == 0


def test_bf16_attention_on_the_cpu_matches_float32_with_padding():
    """The CPU bf16 path (its own kernel choice) attends like float32 and never to padded keys."""
    from detr_lite.modeling_detr_lite import DeTRLiteAttention

    torch.manual_seed(0)
    attention = DeTRLiteAttention(d_model=64, num_heads=8, dropout=0.0).eval()
    query, key = torch.randn(2, 10, 64), torch.randn(2, 12, 64)
    padding = torch.zeros(2, 12, dtype=torch.bool)
    padding[1, 7:] = True
    with torch.no_grad():
        reference, _ = attention(query, key, key, padding)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, _ = attention(query, key, key, padding)
            changed = key.clone()
            changed[1, 7:] += 100.0  # only padded keys of image 1 change
            after, _ = attention(query, changed, changed, padding)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(after, low, atol=0, rtol=0)


def test_padding_mask_changes_the_prediction(tiny_model):
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        masked = tiny_model(pixel_values, pixel_mask).logits
        unmasked = tiny_model(pixel_values).logits
    torch.testing.assert_close(masked[0], unmasked[0])  # the unpadded image is unaffected
    assert (masked[1] - unmasked[1]).abs().max() > 1e-4


def test_sine_position_embedding_normalised_by_unpadded_extent():
    mask = torch.zeros(2, 4, 6, dtype=torch.bool)
    mask[0] = True
    mask[1, :2, :3] = True  # the second image covers the top-left quarter
    pos = sine_position_embedding(mask, num_features=8).view(2, 4, 6, 16)
    # The last real position of each image gets the same (2π-normalised) embedding.
    torch.testing.assert_close(pos[0, 3, 5], pos[1, 1, 2], atol=1e-5, rtol=0)
    # First position of the full image: y = 1/4 of its height, x = 1/6 of its width, times 2π; the first pair
    # of each axis has wavelength 1: (sin, cos).
    y, x = 2 * torch.pi / 4, 2 * torch.pi / 6
    expected = torch.tensor([torch.sin(torch.tensor(y)), torch.cos(torch.tensor(y)), torch.sin(torch.tensor(x))])
    torch.testing.assert_close(pos[0, 0, 0, [0, 1, 8]], expected, atol=1e-5, rtol=0)


def test_loss_only_with_labels_and_gradients_reach_trainable_parts():
    torch.manual_seed(0)
    model = DeTRLiteForObjectDetection(tiny_config()).train()
    pixel_values, pixel_mask = padded_batch()
    out = model(pixel_values, pixel_mask, labels=random_labels(2))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_giou_1"} <= set(out.loss_dict)
    assert len(out.auxiliary_outputs) == model.config.decoder_layers - 1
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    # timm zero-initialises each block's last BN scale, so from scratch only the shortcut paths get gradient.
    assert grads["model.backbone.body.layer4.0.downsample.0.weight"].abs().sum() > 0
    assert grads["model.backbone.body.layer2.0.downsample.0.weight"].abs().sum() > 0
    assert grads["class_labels_classifier.weight"].abs().sum() > 0
    assert grads["model.query_position_embeddings.weight"].abs().sum() > 0
    # DETR trains ResNet layer2-4 only: the stem and layer1 stay frozen.
    for name in ("model.backbone.body.conv1.weight", "model.backbone.body.layer1.0.conv1.weight"):
        assert not dict(model.named_parameters())[name].requires_grad


def test_empty_targets_give_a_finite_loss():
    torch.manual_seed(0)
    model = DeTRLiteForObjectDetection(tiny_config()).train()
    pixel_values, pixel_mask = padded_batch()
    empty = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)} for _ in range(2)]
    out = model(pixel_values, pixel_mask, labels=empty)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_non_finite_predictions_raise_a_clear_error(tiny_model):
    pixel_values, pixel_mask = padded_batch()
    pixel_values[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        tiny_model(pixel_values, pixel_mask, labels=random_labels(2))


def test_batch_norm_is_frozen_and_stays_unchanged_in_training():
    model = DeTRLiteForObjectDetection(tiny_config()).train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    before = model.model.backbone.body.bn1.running_mean.clone()
    pixel_values, pixel_mask = padded_batch()
    model(pixel_values, pixel_mask, labels=random_labels(2)).loss.backward()
    torch.testing.assert_close(model.model.backbone.body.bn1.running_mean, before, rtol=0, atol=0)


def test_unfrozen_batch_norm_and_trainable_layers_are_configurable():
    model = DeTRLiteModel(tiny_config(freeze_batch_norm=False, trainable_backbone_layers=5))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.backbone.parameters())
    frozen = DeTRLiteModel(tiny_config(trainable_backbone_layers=0))
    assert not any(p.requires_grad for p in frozen.backbone.parameters())


def randomise_batch_norm_statistics(model: torch.nn.Module) -> None:
    """Fresh norms are identities (mean 0, var 1, scale 1, shift 0), which folding would leave unchanged."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if hasattr(module, "running_var") and module.running_var is not None:
            for tensor, low, high in ((module.running_mean, -0.2, 0.2), (module.running_var, 0.5, 2.0),
                                      (module.weight, 0.5, 1.5), (module.bias, -0.2, 0.2)):
                tensor.data.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)


@pytest.mark.parametrize("freeze_batch_norm", [True, False])
def test_fold_batch_norm_keeps_the_outputs(freeze_batch_norm):
    model = DeTRLiteForObjectDetection(tiny_config(freeze_batch_norm=freeze_batch_norm)).eval()
    randomise_batch_norm_statistics(model)
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        expected = model(pixel_values, pixel_mask)
        assert model.fold_batch_norm() == 20  # resnet18: the stem, 8 blocks x 2, 3 downsample shortcuts
        actual = model(pixel_values, pixel_mask)
    norms = (torch.nn.BatchNorm2d, FrozenBatchNorm2d)
    assert not any(isinstance(m, norms) for m in model.modules())
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-5, rtol=0)


def test_fold_batch_norm_leaves_training_norms_and_refuses_to_save(tmp_path):
    training = DeTRLiteForObjectDetection(tiny_config(freeze_batch_norm=False)).train()
    assert training.fold_batch_norm() == 0  # batch statistics are not fixed: nothing to fold
    training.save_pretrained(tmp_path / "unfolded")
    frozen = DeTRLiteForObjectDetection(tiny_config())
    assert frozen.fold_batch_norm() == 20  # frozen norms fold in either mode
    with pytest.raises(ValueError, match="folded into its convolutions.*Save the model before folding"):
        frozen.save_pretrained(tmp_path / "folded")
    assert not (tmp_path / "folded").exists()


def plain_backbone(model: DeTRLiteForObjectDetection) -> torch.nn.Module:
    """The same timm backbone with the same weights, its batch norms run as separate modules."""
    config = model.config
    body = timm.create_model(config.backbone, pretrained=False, features_only=True,
                             out_indices=(config.backbone_feature_index,))
    if config.freeze_batch_norm:
        body = timm.layers.freeze_batch_norm_2d(body)
    body.load_state_dict(model.model.backbone.body.state_dict())  # strict: the same keys
    return body.train(model.training)


@pytest.mark.parametrize("freeze_batch_norm", [True, False])
def test_batch_norms_run_inside_the_convolutions_with_the_same_outputs(freeze_batch_norm):
    model = DeTRLiteForObjectDetection(tiny_config(freeze_batch_norm=freeze_batch_norm)).eval()
    randomise_batch_norm_statistics(model)
    assert len(model.model.backbone._conv_norm_pairs) == 20
    pixel_values, _ = padded_batch()
    reference = plain_backbone(model)
    with torch.no_grad():
        features, expected = model.model.backbone(pixel_values), reference(pixel_values)[-1]
    # Scaling the weights instead of the activations reorders float32 rounding through 20 layers.
    torch.testing.assert_close(features, expected, atol=1e-4 * expected.abs().max().item(), rtol=0)


def test_training_through_the_norms_in_the_convolutions_gives_the_reference_gradients():
    model = DeTRLiteForObjectDetection(tiny_config(trainable_backbone_layers=5)).train()
    randomise_batch_norm_statistics(model)
    reference = plain_backbone(model)
    pixel_values, _ = padded_batch()
    model.model.backbone(pixel_values).square().mean().backward()
    reference(pixel_values)[-1].square().mean().backward()
    ours = dict(model.model.backbone.body.named_parameters())
    for name, parameter in reference.named_parameters():
        torch.testing.assert_close(ours[name].grad, parameter.grad, atol=1e-5, rtol=1e-4)


def test_trainable_norms_in_training_mode_update_their_statistics():
    model = DeTRLiteForObjectDetection(tiny_config(freeze_batch_norm=False)).train()
    reference = plain_backbone(model)
    pixel_values, _ = padded_batch()
    model.model.backbone(pixel_values)
    reference(pixel_values)
    torch.testing.assert_close(model.model.backbone.body.state_dict(), reference.state_dict())


def test_saving_the_default_model_is_exact(tmp_path):
    model = DeTRLiteForObjectDetection(tiny_config()).eval()
    randomise_batch_norm_statistics(model)
    model.save_pretrained(tmp_path)
    loaded = DeTRLiteForObjectDetection.from_pretrained(tmp_path).eval()
    assert model.state_dict().keys() == loaded.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values, pixel_mask).logits, model(pixel_values, pixel_mask).logits)


def test_the_default_path_equals_the_folded_path():
    model = DeTRLiteForObjectDetection(tiny_config()).eval()
    randomise_batch_norm_statistics(model)
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        default = model(pixel_values, pixel_mask)
        model.fold_batch_norm()
        folded = model(pixel_values, pixel_mask)
    torch.testing.assert_close(default.logits, folded.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(default.pred_boxes, folded.pred_boxes, atol=1e-5, rtol=0)


def test_a_traced_model_keeps_the_mask_whatever_its_values():
    pixel_mask = torch.ones(1, 8, 8, dtype=torch.long)
    traced = torch.jit.trace(lambda mask: mask_if_padded(mask) * 2, (pixel_mask,), check_trace=False)
    assert torch.equal(traced(torch.zeros_like(pixel_mask)), torch.zeros_like(pixel_mask))


def test_a_mask_without_padding_is_dropped_and_gives_the_same_outputs(tiny_model):
    pixel_values, pixel_mask = padded_batch()
    assert mask_if_padded(pixel_mask) is pixel_mask
    full = torch.ones_like(pixel_mask)
    assert mask_if_padded(full) is None and mask_if_padded(None) is None
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(pixel_values, full).logits, tiny_model(pixel_values).logits,
                                   rtol=0, atol=0)


def test_dilation_halves_the_backbone_stride():
    model = DeTRLiteModel(tiny_config(dilation=True)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    assert out.encoder_last_hidden_state.shape[1] == (128 // 16) ** 2


def test_pre_norm_variant_runs():
    model = DeTRLiteForObjectDetection(tiny_config(pre_norm=True)).eval()
    assert model.model.encoder.norm is not None
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 128, 128)).logits).all()


def test_save_load_round_trip_is_bit_exact(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert {"configuration_detr_lite.py", "modeling_detr_lite.py", "loss_detr_lite.py", "box_ops.py"} <= files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForObjectDetection"].endswith("DeTRLiteForObjectDetection")
    loaded = DeTRLiteForObjectDetection.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        assert torch.equal(tiny_model(pixel_values, pixel_mask).logits, loaded(pixel_values, pixel_mask).logits)


def test_auto_classes_load_a_saved_model(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DeTRLiteConfig)
    assert isinstance(AutoModelForObjectDetection.from_pretrained(tmp_path), DeTRLiteForObjectDetection)
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, DeTRLiteModel)
    torch.testing.assert_close(base.query_position_embeddings.weight, tiny_model.model.query_position_embeddings.weight)


def test_trust_remote_code_load_without_the_package(tiny_model, tmp_path):
    from detr_lite import DeTRLiteImageProcessor

    tiny_model.save_pretrained(tmp_path)
    DeTRLiteImageProcessor(size=128, resize_mode="stretch").save_pretrained(tmp_path)
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        expected = tiny_model(pixel_values, pixel_mask).logits
    torch.save({"pixel_values": pixel_values, "pixel_mask": pixel_mask, "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["detr_lite"] = None  # make the installed package unimportable
        import torch
        from transformers import AutoModelForObjectDetection
        model = AutoModelForObjectDetection.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert "detr_lite" not in type(model).__module__.split(".")[0], type(model).__module__
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            logits = model(io["pixel_values"], io["pixel_mask"]).logits
        assert torch.equal(logits, io["expected"]), (logits - io["expected"]).abs().max()
        from transformers import AutoImageProcessor
        processor = AutoImageProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        assert processor.resize_mode == "stretch"
        print("REMOTE-OK", type(model).__module__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-OK transformers_modules" in result.stdout


def test_num_labels_mismatch_needs_ignore_mismatched_sizes(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    five = {i: f"class{i}" for i in range(5)}
    with pytest.raises(Exception, match="ignore_mismatched_sizes"):
        DeTRLiteForObjectDetection.from_pretrained(tmp_path, id2label=five)
    model = DeTRLiteForObjectDetection.from_pretrained(tmp_path, id2label=five, ignore_mismatched_sizes=True)
    assert model.class_labels_classifier.out_features == 6
    original = tiny_model.state_dict()
    for name, tensor in model.state_dict().items():
        if not name.startswith("class_labels_classifier"):
            assert torch.equal(tensor, original[name]), name


def test_pretrained_backbone_missing_offline_fails_fast():
    start = time.monotonic()
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        DeTRLiteModel(tiny_config(use_pretrained_backbone=True))
    assert time.monotonic() - start < 10
    with pytest.raises(ValueError, match="does not exist"):
        DeTRLiteModel(tiny_config(use_pretrained_backbone=True, backbone_weights_file="/nonexistent/weights.pth"))


def test_pretrained_backbone_from_local_file_and_checkpoints_do_not_reload_it(tmp_path):
    reference = timm.create_model("resnet18", pretrained=False)
    torch.nn.init.constant_(reference.conv1.weight, 0.123)
    weights = tmp_path / "resnet18.safetensors"
    save_file(reference.state_dict(), str(weights))
    model = DeTRLiteForObjectDetection(tiny_config(use_pretrained_backbone=True, backbone_weights_file=str(weights)))
    torch.testing.assert_close(model.model.backbone.body.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.model.backbone.body.layer3[0].conv2.weight, reference.layer3[0].conv2.weight)
    model.save_pretrained(tmp_path / "ckpt")
    weights.unlink()  # the checkpoint carries every weight: loading must not look for the backbone file
    loaded = DeTRLiteForObjectDetection.from_pretrained(tmp_path / "ckpt")
    torch.testing.assert_close(loaded.model.backbone.body.conv1.weight, reference.conv1.weight)


def test_loss_function_is_ours_not_transformers_detr_loss(tiny_model):
    from detr_lite.loss_detr_lite import DeTRLiteLoss

    assert isinstance(tiny_model.loss_function, DeTRLiteLoss)


def test_full_size_r50_preset_forward():
    from pathlib import Path

    preset = json.loads((Path(__file__).parents[1] / "configuration" / "detr_lite_r50.json").read_text())["model"]
    config = DeTRLiteConfig(**{**preset, "use_pretrained_backbone": False})
    model = DeTRLiteForObjectDetection(config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 640, 640))
    assert out.logits.shape == (1, 100, config.num_labels + 1)
    assert out.encoder_last_hidden_state.shape == (1, 400, 256)


def test_earlier_backbone_stage_gives_a_finer_feature_map():
    model = DeTRLiteModel(tiny_config(backbone_feature_index=-2)).eval()
    assert model.backbone.num_channels == 256  # resnet18 layer3
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    assert out.encoder_last_hidden_state.shape[1] == (128 // 16) ** 2
    assert not hasattr(model.backbone.body, "layer4")  # later stages are not even built


def test_predictions_do_not_depend_on_the_rest_of_the_batch(tiny_model):
    pixel_values, pixel_mask = padded_batch(batch=3)
    with torch.no_grad():
        together = tiny_model(pixel_values, pixel_mask)
        alone = tiny_model(pixel_values[2:], pixel_mask[2:])
    torch.testing.assert_close(together.logits[2:], alone.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.pred_boxes[2:], alone.pred_boxes, atol=1e-5, rtol=1e-4)


def test_hidden_states_and_attentions_use_detr_names_and_shapes(tiny_model):
    pixel_values, pixel_mask = padded_batch()
    config = tiny_model.config
    with torch.no_grad():
        out = tiny_model(pixel_values, pixel_mask, output_hidden_states=True, output_attentions=True)
    tokens, queries = (128 // 32) ** 2, config.num_queries
    assert len(out.encoder_hidden_states) == config.encoder_layers + 1
    assert all(h.shape == (2, tokens, config.d_model) for h in out.encoder_hidden_states)
    torch.testing.assert_close(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)
    assert len(out.decoder_hidden_states) == config.decoder_layers + 1
    torch.testing.assert_close(out.decoder_hidden_states[-1], out.last_hidden_state)
    assert [a.shape for a in out.encoder_attentions] == [(2, 4, tokens, tokens)] * config.encoder_layers
    assert [a.shape for a in out.decoder_attentions] == [(2, 4, queries, queries)] * config.decoder_layers
    assert [a.shape for a in out.cross_attentions] == [(2, 4, queries, tokens)] * config.decoder_layers
    torch.testing.assert_close(out.decoder_attentions[0].sum(-1), torch.ones(2, 4, queries))
    with torch.no_grad():
        plain = tiny_model(pixel_values, pixel_mask)
    assert plain.encoder_hidden_states is None and plain.decoder_attentions is None
    tiny_model.config.output_hidden_states = True  # the config's default is honoured too
    with torch.no_grad():
        assert len(tiny_model(pixel_values, pixel_mask).decoder_hidden_states) == config.decoder_layers + 1


def test_eager_and_sdpa_attn_implementations_agree(tmp_path):
    torch.manual_seed(0)
    DeTRLiteForObjectDetection(tiny_config()).save_pretrained(tmp_path)
    models = {name: DeTRLiteForObjectDetection.from_pretrained(tmp_path, attn_implementation=name).eval()
              for name in ("eager", "sdpa")}
    assert {name: model.config._attn_implementation for name, model in models.items()} == {
        "eager": "eager", "sdpa": "sdpa"}
    pixel_values, pixel_mask = padded_batch()
    with torch.no_grad():
        eager, sdpa = (models[name](pixel_values, pixel_mask) for name in ("eager", "sdpa"))
    torch.testing.assert_close(eager.logits, sdpa.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager.pred_boxes, sdpa.pred_boxes, atol=1e-5, rtol=1e-5)
    assert DeTRLiteForObjectDetection(tiny_config()).config._attn_implementation == "sdpa"  # the default


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = DeTRLiteForObjectDetection(tiny_config(dropout=0.0)).train()
    pixel_values, pixel_mask = padded_batch()
    labels = random_labels(2, generator=torch.Generator().manual_seed(0))

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(pixel_values, pixel_mask, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    reference = gradients()
    model.gradient_checkpointing_enable()  # transformers 5 also names it activation_checkpointing_enable
    assert model.is_activation_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.model.encoder.layers)
    assert all(layer.gradient_checkpointing for layer in model.model.decoder.layers)
    checkpointed = gradients()
    assert checkpointed.keys() == reference.keys()
    for name, gradient in reference.items():
        torch.testing.assert_close(checkpointed[name], gradient, atol=1e-6, rtol=1e-5, msg=name)
