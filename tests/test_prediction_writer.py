import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from dense_lightning.callbacks.prediction_writer import PredictionImageWriter
from dense_lightning.data import (
    SyntheticDetectionDataModule,
    SyntheticKeypointsDataModule,
    SyntheticSegmentationDataModule,
)
from dense_lightning.tasks import (
    KeypointEstimationTask,
    ObjectDetectionTask,
    SemanticSegmentationTask,
)

REPO = Path(__file__).resolve().parents[1]
SIZES = dict(image_size=32, num_train=4, num_val=4, num_test=4, num_predict=3, batch_size=2)
TASKS = {
    "segmentation": (
        lambda: SemanticSegmentationTask(backbone="test_resnet", num_classes=4, output_stride=8),
        lambda: SyntheticSegmentationDataModule(num_classes=4, **SIZES),
    ),
    "detection": (
        lambda: ObjectDetectionTask(backbone="test_resnet", num_classes=3, output_stride=8),
        lambda: SyntheticDetectionDataModule(num_classes=3, **SIZES),
    ),
    "keypoints": (
        lambda: KeypointEstimationTask(backbone="test_resnet", output_stride=8, head_channels=16),
        lambda: SyntheticKeypointsDataModule(**SIZES),
    ),
}


def _predict(tmp_path, task, data, writer):
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[writer],
    )  # fmt: skip
    return trainer.predict(task, datamodule=data)


# Every task names its files alike, zero-padded so that they sort in dataset order.
EXPECTED = sorted(f"image_{i:06d}{suffix}.png" for i in range(3) for suffix in ("", "_dense"))


@pytest.mark.parametrize("name", list(TASKS))
def test_writes_one_png_per_image_and_the_dense_picture(tmp_path, name, caplog):
    torch.manual_seed(0)
    make_task, make_data = TASKS[name]
    out = tmp_path / "pictures"
    writer = PredictionImageWriter(output_dir=str(out), dense_vs_original=True, min_size=64)
    with caplog.at_level(logging.INFO):
        predictions = _predict(tmp_path, make_task(), make_data(), writer)
    assert sum(len(p) for p in predictions) == 3
    files = sorted(p.name for p in out.iterdir())
    assert files == EXPECTED
    # The run says where the pictures went and how many, once.
    said = [r.getMessage() for r in caplog.records if "PredictionImageWriter" in r.getMessage()]
    assert said == [f"PredictionImageWriter: wrote 6 PNG files to {out.resolve()}"]
    assert sorted(writer.written) == sorted(out / f for f in files)
    for file in files:
        with Image.open(out / file) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            pixels = np.asarray(image)
        assert pixels.shape[0] >= 64 and pixels.std() > 0
    # Target | prediction per image; input | original | dense | lattice in the dense picture.
    with Image.open(out / files[0]) as pred, Image.open(out / files[1]) as dense:
        assert dense.width > pred.width


def test_default_folder_and_no_dense_picture_for_an_original_network(tmp_path):
    task = SemanticSegmentationTask(backbone="test_resnet", num_classes=4, output_stride=None)
    data = SyntheticSegmentationDataModule(num_classes=4, **SIZES)
    writer = PredictionImageWriter(dense_vs_original=True)
    _predict(tmp_path, task, data, writer)
    files = sorted(p.name for p in (tmp_path / "predictions").iterdir())
    assert files == ["image_000000.png", "image_000001.png", "image_000002.png"]


def test_names_are_dataset_indices_else_running_numbers():
    names = PredictionImageWriter.names
    assert names([7, 12], 2) == ["image_000007", "image_000012"]
    assert names([4, 5], 2, dataloader_idx=1) == ["loader1_image_000004", "loader1_image_000005"]
    # Without dataset indices: this rank's running count, and the rank when there are several.
    assert names(None, 2, first=6) == ["image_000006", "image_000007"]
    assert names(None, 1, first=3, world_size=2, rank=1) == ["rank1_image_000003"]
    assert sorted(names(list(range(12)), 12)) == names(list(range(12)), 12)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_get_the_permissions_of_the_umask(tmp_path, umask):
    task, data = TASKS["segmentation"][0](), TASKS["segmentation"][1]()
    out = tmp_path / "pictures"
    previous = os.umask(umask)
    try:
        _predict(tmp_path, task, data, PredictionImageWriter(output_dir=str(out), min_size=32))
    finally:
        os.umask(previous)
    modes = {p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {0o666 & ~umask}


def test_rejects_bad_arguments_and_batches(tmp_path):
    with pytest.raises(ValueError, match="min_size"):
        PredictionImageWriter(min_size=0)
    with pytest.raises(ValueError, match="score_threshold"):
        PredictionImageWriter(score_threshold=1.5)
    writer = PredictionImageWriter(output_dir=str(tmp_path))
    with pytest.raises(TypeError, match="dict batches"):
        writer.write_on_batch_end(None, None, None, None, (torch.zeros(1),), 0, 0)


def test_predict_command_writes_pictures(run_cli, tmp_path):
    out = tmp_path / "cli_pictures"
    run_cli(
        "predict", "--config", REPO / "configs/segmentation/quickstart.yaml",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.backbone=test_resnet", "--data.init_args.image_size=32",
        "--data.init_args.num_predict=2", "--data.init_args.batch_size=2",
        "--trainer.callbacks+=dense_lightning.callbacks.prediction_writer.PredictionImageWriter",
        f"--trainer.callbacks.init_args.output_dir={out}",
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["image_000000.png", "image_000001.png"]
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporary files
