"""DeTR-Lite: DETR object detection packaged for the Hugging Face hub.

Importing the package registers the config, model and image processor with the Auto classes.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForObjectDetection, AutoVideoProcessor
from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

from .configuration_detr_lite import DeTRLiteConfig
from .image_processing_detr_lite import DeTRLiteImageProcessor
from .modeling_detr_lite import DeTRLiteForObjectDetection, DeTRLiteModel, DeTRLitePreTrainedModel

AutoConfig.register(DeTRLiteConfig.model_type, DeTRLiteConfig, exist_ok=True)
AutoModel.register(DeTRLiteConfig, DeTRLiteModel, exist_ok=True)
AutoModelForObjectDetection.register(DeTRLiteConfig, DeTRLiteForObjectDetection, exist_ok=True)
# Registered for both backends: transformers otherwise logs a "torchvision backend not available" fallback.
AutoImageProcessor.register(
    DeTRLiteConfig,
    image_processor_classes={"pil": DeTRLiteImageProcessor, "torchvision": DeTRLiteImageProcessor},
    exist_ok=True,
)
# pipeline("object-detection") checks the model class against this name table, not the registry above,
# and would log "model not supported" for DeTR-Lite.
MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES[DeTRLiteConfig.model_type] = DeTRLiteForObjectDetection.__name__
# No video processor: registering none stops pipeline() from deriving one from the image processor's
# auto_map and asking "Do you wish to run the custom code? [y/N]" on the console.
AutoVideoProcessor.register(DeTRLiteConfig, video_processor_classes={}, exist_ok=True)

__all__ = [
    "DeTRLiteConfig",
    "DeTRLiteForObjectDetection",
    "DeTRLiteImageProcessor",
    "DeTRLiteModel",
    "DeTRLitePreTrainedModel",
]

# save_pretrained then writes `auto_map` and copies the code, so a saved folder loads with trust_remote_code.
DeTRLiteConfig.register_for_auto_class()
DeTRLiteModel.register_for_auto_class("AutoModel")
DeTRLiteForObjectDetection.register_for_auto_class("AutoModelForObjectDetection")
DeTRLiteImageProcessor.register_for_auto_class("AutoImageProcessor")
