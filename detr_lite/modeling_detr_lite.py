"""DeTR-Lite model: timm backbone -> transformer encoder/decoder -> set prediction heads.

The tensor math follows DETR (Carion et al., "End-to-End Object Detection with Transformers", 2020):
post-norm layers, sine position embedding added to queries and keys at every attention layer,
learned object queries, and class/box heads shared by every decoder layer.
"""

import contextlib
import math
import os
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .configuration_detr_lite import DeTRLiteConfig
from .denoising import DenoisingGroups, DenoisingQueries
from .loss_detr_lite import DeTRLiteLoss, PredictionSet
from .queries import BoxPositionEmbedding, Queries, build_queries, decode_boxes, offset_boxes, sine_features

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


@dataclass
class DeTRLiteModelOutput(ModelOutput):
    """Output of `DeTRLiteModel`.

    Args:
        last_hidden_state: (B, Q, d_model) final decoder output, after the shared LayerNorm.
        intermediate_hidden_states: (L, B, Q, d_model) every decoder layer's output after the shared LayerNorm;
            the last entry equals `last_hidden_state`.
        encoder_last_hidden_state: (B, HW, d_model) encoder output (the decoder's memory).
        decoder_hidden_states: with `output_hidden_states=True`, L + 1 tensors (B, Q, d_model): the decoder's
            input queries, then each layer's output after the shared LayerNorm.
        encoder_hidden_states: with `output_hidden_states=True`, encoder_layers + 1 tensors (B, HW, d_model):
            the projected image tokens, then each encoder layer's output.
        decoder_attentions: with `output_attentions=True`, one (B, heads, Q, Q) self-attention map per decoder layer.
        encoder_attentions: with `output_attentions=True`, one (B, heads, HW, HW) map per encoder layer.
        cross_attentions: one (B, heads, Q, HW) tensor per decoder layer, only with `output_attentions=True`.
        feature_mask: (B, h, w) bool, True where the backbone feature map covers real (unpadded) pixels.
        reference_boxes: (B, Q, 4) each query's first reference box (cx, cy, w, h), only with
            `query_source="encoder"` (see `detr_lite.queries`).
        proposal_logits: (B, HW, num_labels + 1) every encoder token's class proposal, only with encoder queries.
        proposal_boxes: (B, HW, 4) every encoder token's box proposal, only with encoder queries.
        one_to_many: in training with `one_to_many_copies`, the one-to-many group's (L, B, Q, d_model) decoder
            outputs and (B, Q, 4) reference boxes.
        denoising: in training with `denoising_groups` and `labels`, the denoising queries' (L, B, G * S, d_model)
            decoder outputs, (B, G * S, 4) reference boxes and the queries themselves (`DenoisingGroups`).
    """

    last_hidden_state: torch.FloatTensor | None = None
    intermediate_hidden_states: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    feature_mask: torch.BoolTensor | None = None
    reference_boxes: torch.FloatTensor | None = None
    proposal_logits: torch.FloatTensor | None = None
    proposal_boxes: torch.FloatTensor | None = None
    one_to_many: tuple[torch.FloatTensor, torch.FloatTensor] | None = None
    denoising: tuple[torch.FloatTensor, torch.FloatTensor, DenoisingGroups] | None = None


@dataclass
class DeTRLiteObjectDetectionOutput(ModelOutput):
    """Output of `DeTRLiteForObjectDetection`.

    Args:
        loss: scalar total Hungarian loss, only when `labels` are given.
        loss_dict: the individual loss terms (`loss_ce`, `loss_bbox`, `loss_giou`, `cardinality_error`, and the
            auxiliary layers' terms with a `_{i}` suffix, the token proposals' with `_enc`), only when `labels`
            are given.
        logits: (B, Q, num_labels + 1) class logits; the last index is "no object".
        pred_boxes: (B, Q, 4) boxes as (cx, cy, w, h) normalised to the unpadded resized image.
        auxiliary_outputs: one `{"logits", "pred_boxes"}` dict per earlier decoder layer, when `labels` are given
            and `config.auxiliary_loss` is on.
        last_hidden_state: (B, Q, d_model) final decoder output.
        encoder_last_hidden_state: (B, HW, d_model) encoder output.
        decoder_hidden_states, encoder_hidden_states: with `output_hidden_states=True`, as in `DeTRLiteModelOutput`.
        decoder_attentions, encoder_attentions: with `output_attentions=True`, as in `DeTRLiteModelOutput`.
        cross_attentions: one (B, heads, Q, HW) tensor per decoder layer, only with `output_attentions=True`.
        feature_mask: (B, h, w) bool, True where the feature map covers real pixels.
        proposal_logits: (B, HW, num_labels + 1) every encoder token's class proposal, only with encoder queries.
        proposal_boxes: (B, HW, 4) every encoder token's box proposal, only with encoder queries.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict | None = None
    logits: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    auxiliary_outputs: list[dict] | None = None
    last_hidden_state: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    feature_mask: torch.BoolTensor | None = None
    proposal_logits: torch.FloatTensor | None = None
    proposal_boxes: torch.FloatTensor | None = None


def _pretrained_weights_file(config: DeTRLiteConfig) -> str | None:
    """Local file holding the backbone's pretrained weights, or None to let timm download them.

    Raises a clear error at once when the weights are neither given nor cached and the Hub is unreachable,
    instead of letting timm retry the download for a minute.
    """
    if config.backbone_weights_file:
        if not os.path.isfile(config.backbone_weights_file):
            raise ValueError(
                f"backbone_weights_file {config.backbone_weights_file!r} does not exist. Point it at a timm "
                "weights file (.safetensors/.pth) or set use_pretrained_backbone=False."
            )
        return config.backbone_weights_file
    from huggingface_hub import constants, try_to_load_from_cache

    hub_id = getattr(timm.models.get_pretrained_cfg(config.backbone), "hf_hub_id", None)
    if hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(hub_id, filename)
            if isinstance(cached, str):
                return cached
    if constants.is_offline_mode():
        raise ValueError(
            f"Pretrained weights for backbone {config.backbone!r} are not in the local Hugging Face cache and the "
            "Hub is offline. Download them once where there is network, pass backbone_weights_file=PATH, or set "
            "use_pretrained_backbone=False to train the backbone from scratch."
        )
    return None


def _skip_pretrained_download() -> bool:
    """True while `from_pretrained` builds the model on the meta device: the checkpoint brings the weights."""
    return torch.empty(0).device.type == "meta"


class DeTRLiteBackbone(nn.Module):
    """A timm feature extractor returning one feature map: by default its last (stride 32, or 16 with DC5).

    Batch norm is frozen (timm's conversion) because DETR's per-device batches are too small for
    useful statistics, and only the last `trainable_backbone_layers` stages train, as in DETR.
    """

    def __init__(self, config: DeTRLiteConfig):
        super().__init__()
        load_pretrained = config.use_pretrained_backbone and not _skip_pretrained_download()
        kwargs = {"features_only": True, "out_indices": (config.backbone_feature_index,)}
        if config.dilation:
            kwargs["output_stride"] = 16
        if load_pretrained:
            weights = _pretrained_weights_file(config)
            if weights is not None:
                kwargs["pretrained_cfg_overlay"] = {"file": weights}
        try:
            self.body = timm.create_model(config.backbone, pretrained=load_pretrained, **kwargs)
        except (RuntimeError, TypeError) as error:
            raise ValueError(
                f"timm model {config.backbone!r} cannot be used as a DeTR-Lite backbone ({error}). "
                "Pick a timm model that supports features_only=True, e.g. 'resnet50'."
            ) from error
        if config.freeze_batch_norm:
            self.body = timm.layers.freeze_batch_norm_2d(self.body)
        self._freeze_early_stages(config.trainable_backbone_layers)
        self._conv_norm_pairs = _attach_norms_to_convolutions(self.body)
        self.num_channels = self.body.feature_info.channels()[-1]
        # The backbone's weights come from timm (its own init or pretrained file), not from _init_weights.
        for module in self.modules():
            module._is_hf_initialized = True

    def _freeze_early_stages(self, trainable_layers: int) -> None:
        stages = [info["module"] for info in self.body.feature_info.info]  # every stage, not only the output
        if trainable_layers >= len(stages):
            return
        first_trainable = stages[len(stages) - trainable_layers] if trainable_layers else None
        for name, child in self.body.named_children():
            if name == first_trainable:
                break
            child.requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H / stride, W / stride), in channels-last memory order.

        Channels-last input makes the convolutions run in their fastest layout (oneDNN on CPU, cuDNN on GPU),
        1.2x here for a ResNet-50 at 640 on CPU, and the flattening into tokens that follows is then a free view.
        """
        return self.body(pixel_values.contiguous(memory_format=torch.channels_last))[-1]

    def fold_batch_norm(self) -> int:
        """Folds every batch norm that directly follows a convolution into that convolution; returns how many.

        y = (W * x + b - mean) * gamma / sqrt(var + eps) + beta becomes one convolution with fixed weights and
        the norm becomes an identity. The norm's current statistics are baked in (frozen norms, or trainable
        ones in eval); norms still normalising with batch statistics are left as they are.
        """
        folded = 0
        for conv_name, norm_name in self._conv_norm_pairs:
            conv, norm = self.body.get_submodule(conv_name), self.body.get_submodule(norm_name)
            if not isinstance(conv, _NormFoldingConv2d) or _uses_batch_statistics(norm):
                continue
            conv.weight, conv.bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias)
            conv.__class__ = nn.Conv2d
            del conv.__dict__["following_norm"]
            parent, _, name = norm_name.rpartition(".")
            setattr(self.body.get_submodule(parent), name, nn.Identity())
            folded += 1
        return folded


def _attach_norms_to_convolutions(body: nn.Module) -> list[tuple[str, str]]:
    """Makes every batch norm that directly follows a convolution run inside that convolution; returns the pairs.

    Each (conv, norm) pair is found in the traced graph, so only a norm whose input is the output of a
    convolution used nowhere else is paired. The convolution then scales its weights by the norm's per-channel
    factor at each call (cheap: weights are small next to activations) and the norm passes its input through,
    saving two passes over every activation. A norm that normalises with batch statistics (trainable, in
    training mode) runs as usual. Parameters and buffers keep their modules and names, so the state dict is
    unchanged.
    """
    graph = _NormLeafTracer().trace(body)
    modules = dict(body.named_modules())
    pairs = []
    for node in graph.nodes:
        norm = modules.get(node.target) if node.op == "call_module" else None
        if type(norm) not in _FOLDED_NORM_CLASSES or norm.weight is None or norm.running_mean is None:
            continue
        source = node.args[0]
        conv = modules.get(source.target) if source.op == "call_module" else None
        if type(conv) is not nn.Conv2d or len(source.users) != 1:
            continue
        conv.__class__ = _NormFoldingConv2d
        conv.__dict__["following_norm"] = norm  # a plain attribute: not a submodule, not in the state dict
        norm.__class__ = _FOLDED_NORM_CLASSES[type(norm)]
        pairs.append((source.target, node.target))
    return pairs


class _NormFoldingConv2d(nn.Conv2d):
    """A convolution that applies the batch norm after it (`following_norm`) by rescaling its own weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.__dict__["following_norm"]
        if _uses_batch_statistics(norm):
            return super().forward(x)
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()  # (C_out,)
        shift = norm.bias - norm.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias * scale
        return self._conv_forward(x, self.weight * scale[:, None, None, None], shift)


class _FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen batch norm whose convolution applies it: passes its input through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _FoldedBatchNorm2d(nn.BatchNorm2d):
    """A trainable batch norm whose convolution applies it, except while it normalises with batch statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if _uses_batch_statistics(self) else x


_FOLDED_NORM_CLASSES = {FrozenBatchNorm2d: _FoldedFrozenBatchNorm2d, nn.BatchNorm2d: _FoldedBatchNorm2d}


class _NormLeafTracer(fx.Tracer):
    """Traces a backbone keeping frozen batch norms as modules (fx would otherwise trace into them)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, FrozenBatchNorm2d) or super().is_leaf_module(module, qualified_name)


def _uses_batch_statistics(norm: nn.Module) -> bool:
    """A trainable batch norm in training mode normalises with each batch's statistics: nothing fixed to fold."""
    return isinstance(norm, nn.BatchNorm2d) and (norm.training or norm.running_mean is None)


def sine_position_embedding(mask: torch.Tensor, num_features: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's 2-D sine position embedding, normalised by the unpadded extent of each image.

    Args:
        mask: (B, h, w) bool, True on real (unpadded) positions.
        num_features: features per axis; the embedding has 2 * num_features channels (y first, then x).
        temperature: the wavelength base, as in "Attention Is All You Need".

    Returns:
        (B, h * w, 2 * num_features) float32.
    """
    eps, scale = 1e-6, 2 * math.pi
    not_padded = mask.float()
    y_embed = not_padded.cumsum(1)  # (B, h, w)
    x_embed = not_padded.cumsum(2)
    # Normalising by the last cumulative value maps each image's real extent to (0, 2π], whatever its padding.
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    pos_x = sine_features(x_embed, num_features, temperature)  # (B, h, w, F)
    pos_y = sine_features(y_embed, num_features, temperature)
    return torch.cat((pos_y, pos_x), dim=3).flatten(1, 2)  # (B, h * w, 2F)


def mask_if_padded(pixel_mask: torch.Tensor | None) -> torch.Tensor | None:
    """`pixel_mask`, or None when it is on the host and marks no padding, so that attention skips masking.

    A mask on an accelerator is kept as it is: checking it would cost a device synchronisation, more than the
    masking saves. Move masks to the device after this check (as `predict_dataset` does). While the model is
    traced or exported the mask is kept too: a graph must not depend on the values of one example input.
    """
    if pixel_mask is None or pixel_mask.device.type != "cpu" or _is_tracing() or not bool(pixel_mask.all()):
        return pixel_mask
    return None


def _is_tracing() -> bool:
    """True inside torch.jit.trace / the TorchScript ONNX exporter, torch.export, or torch.compile."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _attention_kernels(q: torch.Tensor):
    """The kernel choice for `scaled_dot_product_attention`: on the CPU in bf16/fp16, the plain (math) kernel.

    There the fused flash kernel is the slower one for DETR's small heads: a quickstart training step (resnet10t,
    bf16 autocast, 2 cores) took 242 ms with the math kernel against 336 ms. In float32 (within 5% either way,
    for the quickstart and the R50 preset) and on GPUs, torch's own choice stands.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


class DeTRLiteAttention(nn.Module):
    """Multi-head attention with separate query/key/value inputs (DETR adds positions to q and k, not v).

    Runs through `scaled_dot_product_attention` (fused kernels, `attn_implementation="sdpa"`, the default);
    `need_weights=True` takes the eager path (`attn_implementation="eager"`), which also returns the attention
    probabilities, for visualising where a query looks.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, L, hd)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query (B, Lq, D), key/value (B, Lk, D), key_padding_mask (B, Lk) bool True on padding.

        Returns the attended values (B, Lq, D) and, with `need_weights`, the weights (B, heads, Lq, Lk).
        """
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, heads, Lq, Lk)
            if keep is not None:
                scores = scores.masked_fill(~keep, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p=dropout, training=self.training) @ v
        else:
            with _attention_kernels(q):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout)
        out = out.transpose(1, 2).flatten(2)  # (B, Lq, D)
        return self.out_proj(out), weights


class DeTRLiteFeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, config: DeTRLiteConfig):
        super().__init__()
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.activation = _ACTIVATIONS[config.activation_function]
        self.activation_dropout = nn.Dropout(config.activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.activation_dropout(self.activation(self.linear1(x))))


def _eager_attention(config: DeTRLiteConfig, output_attentions: bool) -> bool:
    """Whether attention runs the eager path: to return its weights, or because the config asks for it."""
    return output_attentions or config._attn_implementation == "eager"


class DeTRLiteEncoderLayer(GradientCheckpointingLayer):
    """Self-attention over image tokens (q = k = x + pos, v = x), then a feed-forward block.

    Tensors are passed positionally, so gradient checkpointing (`GradientCheckpointingLayer`) recomputes them.
    """

    def __init__(self, config: DeTRLiteConfig):
        super().__init__()
        self.config = config
        d_model = config.d_model
        self.self_attn = DeTRLiteAttention(d_model, config.encoder_attention_heads, config.attention_dropout)
        self.ffn = DeTRLiteFeedForward(d_model, config.encoder_ffn_dim, config)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.pre_norm = config.pre_norm

    def forward(self, x: torch.Tensor, pos: torch.Tensor, padding_mask: torch.Tensor | None,
                output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x, pos (B, HW, D); padding_mask (B, HW) True on padding. Returns x and, eager, the weights."""
        eager = _eager_attention(self.config, output_attentions)
        if self.pre_norm:
            h = self.norm1(x)
            attended, weights = self.self_attn(h + pos, h + pos, h, padding_mask, eager)
            x = x + self.dropout(attended)
            return x + self.dropout(self.ffn(self.norm2(x))), weights
        attended, weights = self.self_attn(x + pos, x + pos, x, padding_mask, eager)
        x = self.norm1(x + self.dropout(attended))
        return self.norm2(x + self.dropout(self.ffn(x))), weights


class DeTRLiteDecoderLayer(GradientCheckpointingLayer):
    """Self-attention among object queries, cross-attention into the image memory, then feed-forward."""

    def __init__(self, config: DeTRLiteConfig):
        super().__init__()
        self.config = config
        d_model, heads = config.d_model, config.decoder_attention_heads
        self.self_attn = DeTRLiteAttention(d_model, heads, config.attention_dropout)
        self.cross_attn = DeTRLiteAttention(d_model, heads, config.attention_dropout)
        self.ffn = DeTRLiteFeedForward(d_model, config.decoder_ffn_dim, config)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.pre_norm = config.pre_norm

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        padding_mask: torch.Tensor | None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """tgt, query_pos (B, Q, D); memory, pos (B, HW, D). Returns (B, Q, D) and, eager, the self- and
        cross-attention weights."""
        eager = _eager_attention(self.config, output_attentions)
        if self.pre_norm:
            h = self.norm1(tgt)
            attended, self_weights = self.self_attn(h + query_pos, h + query_pos, h, None, eager)
            tgt = tgt + self.dropout(attended)
            h = self.norm2(tgt)
            attended, cross_weights = self.cross_attn(h + query_pos, memory + pos, memory, padding_mask, eager)
            tgt = tgt + self.dropout(attended)
            return tgt + self.dropout(self.ffn(self.norm3(tgt))), self_weights, cross_weights
        attended, self_weights = self.self_attn(tgt + query_pos, tgt + query_pos, tgt, None, eager)
        tgt = self.norm1(tgt + self.dropout(attended))
        attended, cross_weights = self.cross_attn(tgt + query_pos, memory + pos, memory, padding_mask, eager)
        tgt = self.norm2(tgt + self.dropout(attended))
        return self.norm3(tgt + self.dropout(self.ffn(tgt))), self_weights, cross_weights


class DeTRLiteEncoder(nn.Module):
    def __init__(self, config: DeTRLiteConfig):
        super().__init__()
        self.layers = nn.ModuleList(DeTRLiteEncoderLayer(config) for _ in range(config.encoder_layers))
        # Pre-norm stacks leave the residual stream un-normalised: close them with a LayerNorm.
        self.norm = nn.LayerNorm(config.d_model) if config.pre_norm else None

    def forward(self, x: torch.Tensor, pos: torch.Tensor, padding_mask: torch.Tensor | None,
                output_attentions: bool = False, output_hidden_states: bool = False) -> tuple:
        """x, pos (B, HW, D). Returns the memory (B, HW, D), the hidden states (input, then every layer's output)
        and the self-attention weights per layer; each tuple only when asked for, else None."""
        hidden_states, attentions = [x], []
        for layer in self.layers:
            x, weights = layer(x, pos, padding_mask, output_attentions)
            hidden_states.append(x)
            attentions.append(weights)
        memory = x if self.norm is None else self.norm(x)
        return (memory, tuple(hidden_states) if output_hidden_states else None,
                tuple(attentions) if output_attentions else None)


class DeTRLiteDecoder(nn.Module):
    def __init__(self, config: DeTRLiteConfig):
        super().__init__()
        self.layers = nn.ModuleList(DeTRLiteDecoderLayer(config) for _ in range(config.decoder_layers))
        self.norm = nn.LayerNorm(config.d_model)  # shared by every layer's output, so all heads see one scale
        # With box_query_position, each layer's query position comes from the query's current box (DAB-DETR)
        self.box_position = BoxPositionEmbedding(config.d_model) if config.box_query_position else None
        self.refine = config.box_refinement

    def forward(
        self,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor | None,
        padding_mask: torch.Tensor | None,
        need_weights: bool = False,
        tgt: torch.Tensor | None = None,
        reference_boxes: torch.Tensor | None = None,
        box_head: nn.Module | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """Returns every layer's normalised output (L, B, Q, D) and, with `need_weights`, the cross- and the
        self-attention weights per layer (else None).

        `tgt` (B, Q, D) is the queries' initial content; None starts them empty as in DETR, where a learned
        query's identity lives in `query_pos` alone. With `box_query_position`, `query_pos` (may be None) is embedded
        at each layer from the query's reference box (B, Q, 4): the first from `reference_boxes`, then, with
        `box_refinement` and the detector's `box_head`, the box the layer before predicted (detached, the
        same boxes as `decode_boxes` gives).
        """
        if tgt is None:
            tgt = torch.zeros_like(query_pos)
        reference = reference_boxes if self.box_position is not None else None
        outputs, cross_attentions, self_attentions = [], [], []
        for layer in self.layers:
            if reference is not None:
                if outputs and self.refine and box_head is not None:  # the box the layer before predicted
                    reference = offset_boxes(box_head(outputs[-1]), reference).detach()
                query_pos = self.box_position(reference)
            tgt, self_weights, cross_weights = layer(tgt, memory, pos, query_pos, padding_mask, need_weights)
            outputs.append(self.norm(tgt))  # the un-normalised stream flows on, as in DETR
            cross_attentions.append(cross_weights)
            self_attentions.append(self_weights)
        if not need_weights:
            return torch.stack(outputs), None, None
        return torch.stack(outputs), tuple(cross_attentions), tuple(self_attentions)


class DeTRLiteMLP(nn.Module):
    """The box head: a small MLP with ReLU between layers."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class DeTRLitePreTrainedModel(PreTrainedModel):
    config: DeTRLiteConfig
    config_class = DeTRLiteConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["DeTRLiteEncoderLayer", "DeTRLiteDecoderLayer"]
    supports_gradient_checkpointing = True  # encoder and decoder layers (GradientCheckpointingLayer)
    _supports_sdpa = True  # attn_implementation "sdpa" (the default, fused kernels) or "eager" (weights)
    _batch_norm_folded = False  # set by fold_batch_norm: the weights no longer have the saved layout

    @torch.no_grad()
    def fold_batch_norm(self) -> int:
        """For export: bakes the backbone's batch norms into the weights of the convolutions before them (see
        `DeTRLiteBackbone.fold_batch_norm`); outputs stay equal to 1e-5. Without it the convolutions already
        apply their norms by rescaling their weights at each call, so folding saves only that rescaling.

        Trainable batch norms are folded only in eval mode. The folded model has a different parameter layout,
        so it can no longer be trained as before or saved; save (or keep) the unfolded model.

        Returns:
            The number of batch norms folded.
        """
        folded = sum(module.fold_batch_norm() for module in self.modules() if isinstance(module, DeTRLiteBackbone))
        self._batch_norm_folded = self._batch_norm_folded or folded > 0
        return folded

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._batch_norm_folded:
            raise ValueError(
                "This model's batch norms were folded into its convolutions for inference (fold_batch_norm), so "
                "its weights no longer match DeTR-Lite's layout. Save the model before folding, or reload it.")
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # DETR's init: Xavier for transformer matrices, PyTorch defaults for the projection and heads,
        # N(0, 1) for the object queries. The backbone is initialised by timm and never reaches here.
        # Children are visited before their parents, so attention/feed-forward blocks override their linears.
        if isinstance(module, DeTRLiteAttention):
            for linear in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
                init.xavier_uniform_(linear.weight, gain=self.config.init_xavier_std)
                init.zeros_(linear.bias)
        elif isinstance(module, DeTRLiteFeedForward):
            for linear in (module.linear1, module.linear2):
                init.xavier_uniform_(linear.weight)
                _default_bias_init(linear)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            _default_bias_init(module)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


def _default_bias_init(module: nn.Module) -> None:
    """PyTorch's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in = module.weight[0].numel()
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
    init.uniform_(module.bias, -bound, bound)


class DeTRLiteModel(DeTRLitePreTrainedModel):
    """Backbone, input projection, position embedding, encoder and decoder; no prediction heads."""

    def __init__(self, config: DeTRLiteConfig):
        super().__init__(config)
        self.backbone = DeTRLiteBackbone(config)
        self.input_projection = nn.Conv2d(self.backbone.num_channels, config.d_model, kernel_size=1)
        queries = build_queries(config)
        self._queries_name = queries.module_name
        self.add_module(queries.module_name, queries)
        self.encoder = DeTRLiteEncoder(config)
        self.decoder = DeTRLiteDecoder(config)
        self.denoising = DenoisingQueries(config) if config.denoising_groups else None
        self.post_init()

    @property
    def queries(self) -> nn.Module:
        """Where the decoder's queries come from (`detr_lite.queries`), chosen once from the config."""
        return getattr(self, self._queries_name)

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        box_head: nn.Module | None = None,
        labels: list[dict] | None = None,
        **kwargs,
    ) -> DeTRLiteModelOutput | tuple:
        """Args:
            pixel_values: (B, 3, H, W) normalised images.
            pixel_mask: (B, H, W), 1 on real pixels, 0 on padding; None means no padding.
            output_attentions: also return every attention map (slower eager attention); None: the config's.
            output_hidden_states: also return the encoder's and decoder's hidden states; None: the config's.
            box_head: the detector's box head, with which the decoder refines the boxes its query positions
                are embedded from (`box_query_position` with `box_refinement`); without it they stay the
                first reference boxes.
            labels: in training with `denoising_groups`, the targets the denoising queries are made from.
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (self.config.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be (B, 3, H, W), got shape {tuple(pixel_values.shape)}.")
        features = self.backbone(pixel_values)  # (B, C, h, w)
        batch = features.shape[0]
        pixel_mask = mask_if_padded(pixel_mask)
        if pixel_mask is None:
            feature_mask = torch.ones((batch, *features.shape[-2:]), dtype=torch.bool, device=features.device)
        else:
            # Nearest-neighbour downsampling of the pixel mask, as DETR does.
            feature_mask = F.interpolate(pixel_mask[None].float(), size=features.shape[-2:])[0].bool()  # (B, h, w)
        pos = sine_position_embedding(feature_mask, self.config.d_model // 2).to(features.dtype)  # (B, HW, D)
        padding_mask = None if pixel_mask is None else ~feature_mask.flatten(1)  # (B, HW)
        src = self.input_projection(features).flatten(2).transpose(1, 2)  # (B, HW, D)
        memory, encoder_hidden_states, encoder_attentions = self.encoder(src, pos, padding_mask, output_attentions,
                                                                         output_hidden_states)
        queries: Queries = self.queries(memory, pos, feature_mask)
        hidden, cross_attentions, decoder_attentions = self.decoder(
            memory, pos, queries.position, padding_mask, output_attentions, queries.content, queries.reference_boxes,
            box_head)
        decoder_input = torch.zeros_like(queries.position) if queries.content is None else queries.content
        one_to_many = denoising = None
        if queries.one_to_many is not None:  # training only: decoded apart, so neither group sees the other
            group = queries.one_to_many
            group_hidden, _, _ = self.decoder(memory, pos, group.position, padding_mask, False, group.content,
                                              group.reference_boxes, box_head)
            one_to_many = (group_hidden, group.reference_boxes)
        noised = self.denoising(labels) if self.denoising is not None and self.training and labels else None
        if noised is not None:  # decoded apart too, each group as more images of the batch
            repeat = noised.groups
            noised_hidden, _, _ = self.decoder(
                memory.repeat(repeat, 1, 1), pos.repeat(repeat, 1, 1), None,
                None if padding_mask is None else padding_mask.repeat(repeat, 1), False, noised.content,
                noised.reference_boxes, box_head)
            denoising = (noised.per_image(noised_hidden), noised.per_image(noised.reference_boxes), noised)
        output = DeTRLiteModelOutput(
            last_hidden_state=hidden[-1],
            intermediate_hidden_states=hidden,
            encoder_last_hidden_state=memory,
            decoder_hidden_states=(decoder_input, *hidden) if output_hidden_states else None,
            encoder_hidden_states=encoder_hidden_states,
            decoder_attentions=decoder_attentions,
            encoder_attentions=encoder_attentions,
            cross_attentions=cross_attentions,
            feature_mask=feature_mask,
            reference_boxes=queries.reference_boxes,
            proposal_logits=queries.proposal_logits,
            proposal_boxes=queries.proposal_boxes,
            one_to_many=one_to_many,
            denoising=denoising,
        )
        return output if return_dict is not False else output.to_tuple()


class DeTRLiteForObjectDetection(DeTRLitePreTrainedModel):
    """DeTR-Lite with class and box heads; computes the Hungarian loss when `labels` are given."""

    def __init__(self, config: DeTRLiteConfig):
        super().__init__(config)
        self.model = DeTRLiteModel(config)
        self.class_labels_classifier = nn.Linear(config.d_model, config.num_labels + 1)  # + "no object"
        self.bbox_predictor = DeTRLiteMLP(config.d_model, config.d_model, 4, num_layers=3)
        self.criterion = DeTRLiteLoss(config)
        self.post_init()
        if config.query_source == "encoder":
            # Boxes are offsets from reference boxes: a fresh model predicts exactly its token anchors.
            # (A loaded checkpoint overwrites these zeros with its own weights.)
            with torch.no_grad():
                for last in (self.bbox_predictor.layers[-1], self.model.queries.proposal_box[-1]):
                    last.weight.zero_()
                    last.bias.zero_()

    def _prediction_set(self, name: str, hidden: torch.Tensor, reference_boxes: torch.Tensor, copies: int,
                        matching=None) -> PredictionSet:
        """The heads' predictions for a training-only query group: hidden (L, B, Q, D), reference (B, Q, 4)."""
        boxes = decode_boxes(self.bbox_predictor(hidden), reference_boxes, self.config.box_refinement)
        return PredictionSet(name, self.class_labels_classifier(hidden), boxes, copies, matching)

    @property
    def loss_function(self):
        # transformers would pick its own DETR loss from the class name; ours is the set criterion above.
        return self.criterion

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DeTRLiteObjectDetectionOutput | tuple:
        """Args:
            pixel_values: (B, 3, H, W) normalised images.
            pixel_mask: (B, H, W), 1 on real pixels, 0 on padding.
            labels: B dicts with `class_labels` (n,) and `boxes` (n, 4) as normalised (cx, cy, w, h);
                the loss is computed only when given.
            output_attentions: also return every attention map (eager attention); None: the config's.
            output_hidden_states: also return the encoder's and decoder's hidden states; None: the config's.
        """
        outputs = self.model(pixel_values, pixel_mask=pixel_mask, output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states, box_head=self.bbox_predictor, labels=labels)
        hidden = outputs.intermediate_hidden_states  # (L, B, Q, D)
        if labels is None and not self.config.box_refinement:
            hidden = hidden[-1:]  # inference needs the last layer only
        all_logits = self.class_labels_classifier(hidden)  # (L, B, Q, C + 1)
        all_boxes = decode_boxes(self.bbox_predictor(hidden), outputs.reference_boxes,
                                 self.config.box_refinement)  # (L, B, Q, 4)
        logits, pred_boxes = all_logits[-1], all_boxes[-1]
        loss = loss_dict = auxiliary_outputs = None
        if labels is not None:
            aux_logits = aux_boxes = None
            if self.config.auxiliary_loss:
                aux_logits, aux_boxes = all_logits[:-1], all_boxes[:-1]
                auxiliary_outputs = [{"logits": lg, "pred_boxes": bx} for lg, bx in zip(aux_logits, aux_boxes)]
            extra = []
            if outputs.proposal_logits is not None:
                extra.append(PredictionSet("enc", outputs.proposal_logits[None], outputs.proposal_boxes[None],
                                           self.config.proposal_matching_copies))
            if outputs.one_to_many is not None:
                extra.append(self._prediction_set("o2m", *outputs.one_to_many, self.config.one_to_many_copies))
            if outputs.denoising is not None:
                noised_hidden, noised_reference, noised = outputs.denoising
                extra.append(self._prediction_set("dn", noised_hidden, noised_reference, noised.groups,
                                                  noised.matching(len(noised_hidden))))
            loss, loss_dict = self.criterion(logits, pred_boxes, labels, aux_logits, aux_boxes, extra)
        output = DeTRLiteObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            auxiliary_outputs=auxiliary_outputs,
            last_hidden_state=outputs.last_hidden_state,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            decoder_hidden_states=outputs.decoder_hidden_states,
            encoder_hidden_states=outputs.encoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            encoder_attentions=outputs.encoder_attentions,
            cross_attentions=outputs.cross_attentions,
            feature_mask=outputs.feature_mask,
            proposal_logits=outputs.proposal_logits,
            proposal_boxes=outputs.proposal_boxes,
        )
        return output if return_dict is not False else output.to_tuple()
