"""Exact equivalent mappings (eConv/ePool): dense models from strided CNNs, and back."""

from dense_lightning.equivalent.base import EquivalentLayer, LayerState
from dense_lightning.equivalent.compare import max_errors
from dense_lightning.equivalent.convert import (
    check_output_stride,
    is_dense,
    model_stride,
    to_dense,
    to_original,
)
from dense_lightning.equivalent.errors import Finding, NotEquivalentError
from dense_lightning.equivalent.execution import execution_choices, set_execution
from dense_lightning.equivalent.head import GlobalHeadPlan
from dense_lightning.equivalent.info import DenseInfo, get_dense_info
from dense_lightning.equivalent.layers import EAvgPool2d, EConv2d, EMaxPool2d
from dense_lightning.equivalent.phase import PhaseRegion, batch_to_space, space_to_batch
from dense_lightning.equivalent.regions import RegionPlan
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
    "GlobalHeadPlan",
    "LayerState",
    "NotEquivalentError",
    "OutputCheck",
    "PhaseRegion",
    "RegionPlan",
    "batch_to_space",
    "check_output_stride",
    "execution_choices",
    "get_dense_info",
    "is_dense",
    "max_errors",
    "model_stride",
    "set_execution",
    "shift_and_stitch",
    "space_to_batch",
    "to_dense",
    "to_original",
    "verify_equivalence",
]
