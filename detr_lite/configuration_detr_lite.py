"""DeTR-Lite configuration: every architecture choice, the matcher costs and the loss weights.

A saved config therefore reproduces both the network and the training objective it was trained with.
"""

from transformers import PreTrainedConfig

_ACTIVATIONS = ("relu", "gelu", "silu")
_QUERY_SOURCES = ("learned", "encoder")
_BOOLEAN_FIELDS = ("use_pretrained_backbone", "freeze_batch_norm", "dilation", "pre_norm", "auxiliary_loss",
                   "box_refinement", "box_query_position", "iou_aware_classification")


class DeTRLiteConfig(PreTrainedConfig):
    """Configuration of a DeTR-Lite detector (DETR at a fixed square input size).

    Every field is a keyword argument; invalid combinations raise `ValueError` when the config is
    built, whether from Python or from a `config.json`.
    """

    model_type = "detr_lite"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

    # Backbone
    backbone: str = "resnet50"  # any timm model that supports features_only
    use_pretrained_backbone: bool = False  # ImageNet weights for a fresh model; a checkpoint carries its own
    backbone_weights_file: str | None = None  # local timm weights; else the local Hub cache is tried
    freeze_batch_norm: bool = True  # DETR trains with batch size ~2/GPU: BN statistics would be noise
    trainable_backbone_layers: int = 3  # last k feature stages train; DETR trains ResNet layer2-4 only
    dilation: bool = False  # DC5: dilate the last stage (stride 16) for small objects, 4x encoder cost
    backbone_feature_index: int = -1  # feature stage fed to the transformer: -1 = last (DETR); -2 = one
    # stage earlier (stride 16 on a ResNet): cheaper and finer, for small inputs such as the CPU quickstart
    # Transformer
    d_model: int = 256  # width of every token and query (DETR's 256)
    encoder_layers: int = 6  # self-attention layers over image tokens; 0 feeds the projected features as is
    decoder_layers: int = 6  # each layer predicts boxes; the earlier ones feed the auxiliary loss
    encoder_attention_heads: int = 8  # d_model must divide by it
    decoder_attention_heads: int = 8  # d_model must divide by it
    encoder_ffn_dim: int = 2048  # hidden width of the encoder's feed-forward blocks (DETR's 2048)
    decoder_ffn_dim: int = 2048  # hidden width of the decoder's feed-forward blocks
    dropout: float = 0.1  # on every residual branch, as DETR; 0 for short runs that cannot overfit
    attention_dropout: float = 0.0  # on the attention probabilities; DETR uses none
    activation_dropout: float = 0.0  # inside the feed-forward blocks; DETR uses none
    activation_function: str = "relu"  # of the feed-forward blocks: relu (DETR), gelu or silu
    pre_norm: bool = False  # DETR is post-norm; pre-norm trains more stably with deep stacks
    num_queries: int = 100  # maximum detections per image ("learned" queries only)
    # Where the decoder's queries come from. "learned": DETR's num_queries learned embeddings, which must learn
    # where to look by themselves (DETR's slow convergence). "encoder": one query per encoder token, its content
    # the projected token and its position the token's, each box predicted relative to an anchor box centred on
    # its token (as the two-stage variant of Deformable DETR, Zhu et al. 2021): much faster to train from scratch.
    query_source: str = "learned"
    anchor_size: float = 0.2  # "encoder" queries: width and height of each token's anchor box (normalised)
    num_selected_queries: int = 0  # "encoder" queries: the K best token proposals become queries; 0 = every token
    proposal_matching_copies: int = 1  # "encoder" queries: times each target is matched by the token proposals
    # "encoder" queries: each decoder layer corrects the previous layer's box instead of the first reference
    # (Deformable DETR's iterative refinement), so later layers make finer corrections
    box_refinement: bool = False
    # "encoder" queries: each decoder layer's query position is embedded from the query's current box (DAB-DETR)
    # instead of being its token's position, so attention sees where and how large each box is
    box_query_position: bool = False
    # Training only, with box_query_position: groups of noised target copies that the decoder learns to correct
    # (positives) or to reject (negatives), DN-DETR/DINO's contrastive denoising (see detr_lite.denoising); 0 = off
    denoising_groups: int = 0
    denoising_box_noise: float = 1.0  # a positive's corners move < this x half its side, a negative's 1-2x (DINO)
    denoising_label_flip: float = 0.25  # chance that a denoising query shows a random class instead of its own
    one_to_many_copies: int = 0  # "encoder" queries: k > 0 trains a hidden copy of the queries one-to-many (k each)
    auxiliary_loss: bool = True  # loss on every decoder layer: DETR converges much slower without it
    init_std: float = 0.02  # kept for transformers' initialisation conventions; must be positive
    init_xavier_std: float = 1.0  # gain of the Xavier init of attention projections (DETR's 1.0)
    # Hungarian matcher costs
    class_cost: float = 1.0  # weight of -p[class] in the matching cost
    bbox_cost: float = 5.0  # weight of the L1 box distance in the matching cost
    giou_cost: float = 2.0  # weight of -GIoU in the matching cost
    # Loss weights (cross-entropy has weight 1)
    bbox_loss_coefficient: float = 5.0  # L1 box loss weight; DETR matches it to bbox_cost
    giou_loss_coefficient: float = 2.0  # GIoU loss weight; DETR matches it to giou_cost
    # > 1: the auxiliary layers match every target this many times (one-to-many); the last stays one-to-one
    auxiliary_matching_copies: int = 1
    eos_coefficient: float = 0.1  # weight of the no-object class: ~90 of 100 queries are empty
    # no-object weight of an unmatched query whose box overlaps a target by IoU >= 0.5: a second box on an object,
    # the duplicate a user sees, weighed apart from the many empty queries; None = eos_coefficient
    overlap_eos_coefficient: float | None = None
    # a matched query's class target is the IoU of its box with the target, the rest no-object (an IoU-aware
    # score, as RT-DETR's varifocal loss, in softmax form): the score ranks boxes by fit; False = DETR's one-hot
    iou_aware_classification: bool = False
    # Input
    image_size: int = 640  # the square canvas every image is letterboxed into
    is_encoder_decoder: bool = True  # transformers' flag: outputs carry encoder and decoder states

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.label2id is None:
            self.label2id = {name: index for index, name in self.id2label.items()}
        self._validate()

    def _validate(self) -> None:
        import timm

        def fail(field: str, message: str) -> None:
            raise ValueError(f"DeTRLiteConfig.{field}: {message}")

        if not timm.is_model(self.backbone):
            fail("backbone", f"{self.backbone!r} is not a timm model name (see timm.list_models()).")
        for field in ("d_model", "encoder_ffn_dim", "decoder_ffn_dim", "num_queries", "image_size"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                fail(field, f"must be a positive integer, got {getattr(self, field)!r}.")
        for field in ("encoder_layers", "decoder_layers", "trainable_backbone_layers"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 0:
                fail(field, f"must be a non-negative integer, got {getattr(self, field)!r}.")
        if not isinstance(self.backbone_feature_index, int) or self.backbone_feature_index >= 0:
            fail("backbone_feature_index", f"must be a negative stage index (-1 = last), got "
                 f"{self.backbone_feature_index!r}.")
        for field in _BOOLEAN_FIELDS:
            if not isinstance(getattr(self, field), bool):
                fail(field, f"must be true or false, got {getattr(self, field)!r}.")
        if self.backbone_weights_file is not None and not isinstance(self.backbone_weights_file, str):
            fail("backbone_weights_file", f"must be a file path or None, got {self.backbone_weights_file!r}.")
        for field in ("init_std", "init_xavier_std"):
            if not isinstance(getattr(self, field), int | float) or getattr(self, field) <= 0:
                fail(field, f"must be a positive number, got {getattr(self, field)!r}.")
        self._validate_queries(fail)
        if self.decoder_layers < 1:
            fail("decoder_layers", "at least one decoder layer is needed to produce predictions.")
        for field in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, field)
            if not isinstance(heads, int) or heads < 1 or self.d_model % heads:
                fail(field, f"d_model ({self.d_model}) must be divisible by the number of heads ({heads}).")
        if self.d_model % 4:
            fail("d_model", f"must be divisible by 4 for the 2-D sine position embedding, got {self.d_model}.")
        for field in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, field) < 1.0:
                fail(field, f"must be in [0, 1), got {getattr(self, field)!r}.")
        if self.activation_function not in _ACTIVATIONS:
            fail("activation_function", f"must be one of {_ACTIVATIONS}, got {self.activation_function!r}.")
        for field in (
            "class_cost", "bbox_cost", "giou_cost", "bbox_loss_coefficient", "giou_loss_coefficient",
            "eos_coefficient",
        ):
            if getattr(self, field) < 0:
                fail(field, f"must be non-negative, got {getattr(self, field)!r}.")
        if self.overlap_eos_coefficient is not None and (
                not isinstance(self.overlap_eos_coefficient, int | float) or self.overlap_eos_coefficient < 0):
            fail("overlap_eos_coefficient", f"must be a non-negative number or None, got "
                 f"{self.overlap_eos_coefficient!r}.")
        if self.class_cost == self.bbox_cost == self.giou_cost == 0:
            fail("class_cost", "all matcher costs are 0: the Hungarian matching would be arbitrary.")
        if self.image_size % 32:
            fail("image_size", f"must be a multiple of 32 (the backbone stride), got {self.image_size}.")
        if self.num_labels < 1:
            fail("num_labels", "at least one object class is needed.")

    def _validate_queries(self, fail) -> None:
        """The query-source options (see `detr_lite.queries`)."""
        if self.query_source not in _QUERY_SOURCES:
            fail("query_source", f"must be one of {_QUERY_SOURCES}, got {self.query_source!r}.")
        if not 0.0 < self.anchor_size <= 1.0:
            fail("anchor_size", f"must be in (0, 1] (a fraction of the image side), got {self.anchor_size!r}.")
        if not isinstance(self.one_to_many_copies, int) or self.one_to_many_copies < 0:
            fail("one_to_many_copies", f"must be a non-negative integer (0 = off), got {self.one_to_many_copies!r}.")
        if self.box_query_position and self.query_source != "encoder":
            fail("box_query_position", "needs query_source='encoder' (learned queries have no boxes to embed).")
        if not isinstance(self.denoising_groups, int) or self.denoising_groups < 0:
            fail("denoising_groups", f"must be a non-negative integer (0 = off), got {self.denoising_groups!r}.")
        if self.denoising_groups and not self.box_query_position:
            fail("denoising_groups", "needs box_query_position=true (a denoising query's position is its box).")
        if not isinstance(self.denoising_box_noise, int | float) or self.denoising_box_noise <= 0:
            fail("denoising_box_noise", f"must be a positive number, got {self.denoising_box_noise!r}.")
        if not isinstance(self.denoising_label_flip, int | float) or not 0 <= self.denoising_label_flip <= 1:
            fail("denoising_label_flip", f"must be in [0, 1], got {self.denoising_label_flip!r}.")
        if self.one_to_many_copies and self.query_source != "encoder":
            fail("one_to_many_copies", "needs query_source='encoder' (the group copies the encoder's queries).")
        for field in ("auxiliary_matching_copies", "proposal_matching_copies"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                fail(field, f"must be a positive integer (1 = one-to-one as in DETR), got {getattr(self, field)!r}.")
        if not isinstance(self.num_selected_queries, int) or self.num_selected_queries < 0:
            fail("num_selected_queries", f"must be a non-negative integer (0 = every encoder token), got "
                 f"{self.num_selected_queries!r}.")
        if not isinstance(self.box_refinement, bool):
            fail("box_refinement", f"must be true or false, got {self.box_refinement!r}.")
