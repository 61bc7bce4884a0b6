"""DataModules and datasets: seeded synthetic shapes by default; VOC, COCO, image folders, CSV."""

from dense_lightning.data.base import BaseDataModule, collate_instances
from dense_lightning.data.coco import COCODetectionDataset, COCOKeypointsDataset
from dense_lightning.data.coco_datamodule import COCODetectionDataModule, COCOKeypointsDataModule
from dense_lightning.data.folder import SegmentationFolderDataModule, SegmentationFolderDataset
from dense_lightning.data.image_csv import ImageCSVRegressionDataModule, ImageCSVRegressionDataset
from dense_lightning.data.image_folder import (
    ImageFolderClassificationDataModule,
    ImageFolderClassificationDataset,
)
from dense_lightning.data.synthetic import (
    SyntheticDetectionDataModule,
    SyntheticDetectionDataset,
    SyntheticSegmentationDataModule,
    SyntheticSegmentationDataset,
)
from dense_lightning.data.synthetic_image import (
    SyntheticImageClassificationDataModule,
    SyntheticImageClassificationDataset,
    SyntheticImageRegressionDataModule,
    SyntheticImageRegressionDataset,
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
    "ImageCSVRegressionDataModule",
    "ImageCSVRegressionDataset",
    "ImageFolderClassificationDataModule",
    "ImageFolderClassificationDataset",
    "MissingDataError",
    "SegmentationFolderDataModule",
    "SegmentationFolderDataset",
    "SyntheticDetectionDataModule",
    "SyntheticDetectionDataset",
    "SyntheticImageClassificationDataModule",
    "SyntheticImageClassificationDataset",
    "SyntheticImageRegressionDataModule",
    "SyntheticImageRegressionDataset",
    "SyntheticKeypointsDataModule",
    "SyntheticKeypointsDataset",
    "SyntheticSegmentationDataModule",
    "SyntheticSegmentationDataset",
    "collate_instances",
    "denormalize",
    "normalize",
]
