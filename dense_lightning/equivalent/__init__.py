"""Exact equivalent mappings (eConv/ePool): dense models from strided CNNs, and back."""

from dense_lightning.equivalent.compare import max_errors
from dense_lightning.equivalent.convert import (
    DenseInfo,
    check_output_stride,
    get_dense_info,
    is_dense,
    model_stride,
    to_dense,
    to_original,
)
from dense_lightning.equivalent.errors import Finding, NotEquivalentError
from dense_lightning.equivalent.layers import EAvgPool2d, EConv2d, EMaxPool2d, EquivalentLayer
from dense_lightning.equivalent.phase import set_execution
from dense_lightning.equivalent.report import EquivalenceReport, OutputCheck
from dense_lightning.equivalent.shift_stitch import shift_and_stitch
from dense_lightning.equivalent.verify import verify_equivalence

__all__ = [
    "DenseInfo",
    "EAvgPool2d",
    "EConv2d",
    "EMaxPool2d",
    "EquivalenceReport",
    "EquivalentLayer",
    "Finding",
    "NotEquivalentError",
    "OutputCheck",
    "check_output_stride",
    "get_dense_info",
    "is_dense",
    "max_errors",
    "model_stride",
    "set_execution",
    "shift_and_stitch",
    "to_dense",
    "to_original",
    "verify_equivalence",
]
