"""DeTR-Lite: DETR object detection packaged for the Hugging Face hub.

Importing the package registers the config, model and image processor with the Auto classes.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForObjectDetection

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
