"""dilated-vit-mae: a ViTMAE whose patch tokens are gathered densely and with dilated convolutions.

Importing the package registers the model with transformers' Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForPreTraining`, `AutoModelForImageClassification`, `AutoImageProcessor`), so that
`AutoModel.from_pretrained(folder)` works without `trust_remote_code` once the package is installed.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .configuration_dilated_vit_mae import DilatedViTMAEConfig
from .image_processing_dilated_vit_mae import DilatedViTMAEImageProcessor
from .modeling_dilated_vit_mae import (
    DilatedViTMAEForImageClassification,
    DilatedViTMAEForPreTraining,
    DilatedViTMAEModel,
    DilatedViTMAEPreTrainedModel,
)


__version__ = "0.1.0"

AutoConfig.register(DilatedViTMAEConfig.model_type, DilatedViTMAEConfig, exist_ok=True)
AutoModel.register(DilatedViTMAEConfig, DilatedViTMAEModel, exist_ok=True)
AutoModelForPreTraining.register(DilatedViTMAEConfig, DilatedViTMAEForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(DilatedViTMAEConfig, DilatedViTMAEForImageClassification, exist_ok=True)
AutoImageProcessor.register(
    DilatedViTMAEConfig, image_processor_classes={"pil": DilatedViTMAEImageProcessor}, exist_ok=True
)


def __getattr__(name: str):
    # the data helpers need `datasets`; import them on first use so that the model alone stays light
    if name == "load_celeba":
        from .data.loading import load_celeba

        return load_celeba
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DilatedViTMAEConfig",
    "DilatedViTMAEForImageClassification",
    "DilatedViTMAEForPreTraining",
    "DilatedViTMAEImageProcessor",
    "DilatedViTMAEModel",
    "DilatedViTMAEPreTrainedModel",
    "load_celeba",
]
