"""segmentation_models_pytorch: exact dense encoders, a drop-in for ``encoder_output_stride``."""

from dense_lightning.integrations.smp.architectures import SUPPORTED, Architecture
from dense_lightning.integrations.smp.convert import (
    create_model,
    decoder_stride,
    dense_encoder,
    original_encoder,
)
from dense_lightning.integrations.smp.encoders import undilated_encoder

__all__ = [
    "SUPPORTED",
    "Architecture",
    "create_model",
    "decoder_stride",
    "dense_encoder",
    "original_encoder",
    "undilated_encoder",
]
