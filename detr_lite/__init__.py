"""DeTR-Lite: DETR object detection packaged for the Hugging Face hub.

Importing the package registers the config, model and image processor with the Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForObjectDetection

from .configuration_detr_lite import DeTRLiteConfig
from .modeling_detr_lite import DeTRLiteForObjectDetection, DeTRLiteModel, DeTRLitePreTrainedModel

AutoConfig.register(DeTRLiteConfig.model_type, DeTRLiteConfig, exist_ok=True)
AutoModel.register(DeTRLiteConfig, DeTRLiteModel, exist_ok=True)
AutoModelForObjectDetection.register(DeTRLiteConfig, DeTRLiteForObjectDetection, exist_ok=True)

__all__ = [
    "DeTRLiteConfig",
    "DeTRLiteForObjectDetection",
    "DeTRLiteModel",
    "DeTRLitePreTrainedModel",
]

# save_pretrained then writes `auto_map` and copies the code, so a saved folder loads with trust_remote_code.
DeTRLiteConfig.register_for_auto_class()
DeTRLiteModel.register_for_auto_class("AutoModel")
DeTRLiteForObjectDetection.register_for_auto_class("AutoModelForObjectDetection")
