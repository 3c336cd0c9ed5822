"""GPU paths (bf16 autocast, folded inference on CUDA); skipped where there is no CUDA device, as in CI."""

import pytest
import torch
from conftest import random_labels, tiny_config

from detr_lite import DeTRLiteForObjectDetection

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_bf16_autocast_training_step_keeps_the_loss_in_float32():
    model = DeTRLiteForObjectDetection(tiny_config()).cuda().train()
    pixel_values = torch.randn(2, 3, 128, 128, device="cuda")
    labels = [{key: value.cuda() for key, value in label.items()} for label in random_labels(2)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(pixel_values, labels=labels).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_folded_inference_on_cuda_matches_the_cpu_model():
    model = DeTRLiteForObjectDetection(tiny_config()).eval()
    pixel_values = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected = model(pixel_values).logits
        model.fold_batch_norm()
        actual = model.cuda()(pixel_values.cuda()).logits.cpu()
    torch.testing.assert_close(actual, expected, atol=1e-2, rtol=1e-2)  # cuDNN convolutions may use TF32
