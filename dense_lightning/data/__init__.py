"""DataModules and datasets: seeded synthetic shapes by default, VOC folders and COCO JSON."""

from dense_lightning.data.base import BaseDataModule, collate_instances
from dense_lightning.data.coco import COCODetectionDataset, COCOKeypointsDataset
from dense_lightning.data.coco_datamodule import COCODetectionDataModule, COCOKeypointsDataModule
from dense_lightning.data.folder import SegmentationFolderDataModule, SegmentationFolderDataset
from dense_lightning.data.synthetic import (
    SyntheticDetectionDataModule,
    SyntheticDetectionDataset,
    SyntheticSegmentationDataModule,
    SyntheticSegmentationDataset,
)
from dense_lightning.data.synthetic_keypoints import (
    SyntheticKeypointsDataModule,
    SyntheticKeypointsDataset,
)
from dense_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize
from dense_lightning.data.verify import DatasetError, MissingDataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BaseDataModule",
    "COCODetectionDataModule",
    "COCODetectionDataset",
    "COCOKeypointsDataModule",
    "COCOKeypointsDataset",
    "DatasetError",
    "MissingDataError",
    "SegmentationFolderDataModule",
    "SegmentationFolderDataset",
    "SyntheticDetectionDataModule",
    "SyntheticDetectionDataset",
    "SyntheticKeypointsDataModule",
    "SyntheticKeypointsDataset",
    "SyntheticSegmentationDataModule",
    "SyntheticSegmentationDataset",
    "collate_instances",
    "denormalize",
    "normalize",
]
