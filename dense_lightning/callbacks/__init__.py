"""Callbacks: dense conversion at set-up, inverse-transfer export at the end of fit."""

from dense_lightning.callbacks.dense_conversion import DenseConversion
from dense_lightning.callbacks.export import InverseTransferExport

__all__ = ["DenseConversion", "InverseTransferExport"]
