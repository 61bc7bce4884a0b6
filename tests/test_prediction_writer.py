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
from dense_lightning.viz import save_png

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
NAMES = [f"image_{i:06d}.png" for i in range(3)]


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_names_its_files_alike_and_says_where(tmp_path, name, caplog):
    torch.manual_seed(0)
    make_task, make_data = TASKS[name]
    out = tmp_path / "pictures"
    writer = PredictionImageWriter(output_dir=str(out), min_size=64)
    previous = os.umask(0o022)
    try:
        with caplog.at_level(logging.INFO):
            predictions = _predict(tmp_path, make_task(), make_data(), writer)
    finally:
        os.umask(previous)
    assert sum(len(p) for p in predictions) == 3
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}  # like checkpoints
    assert sorted(p.name for p in out.iterdir()) == NAMES
    assert sorted(writer.written) == [out / n for n in NAMES]
    # The run says where the pictures went and how many, once.
    said = [r.getMessage() for r in caplog.records if "PredictionImageWriter" in r.getMessage()]
    assert said == [f"PredictionImageWriter: wrote 3 PNG files to {out.resolve()}"]
    for file in NAMES:
        with Image.open(out / file) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            pixels = np.asarray(image)
        assert pixels.shape[0] >= 64 and pixels.std() > 0


@pytest.mark.parametrize(
    "name",
    ["segmentation", *(pytest.param(n, marks=pytest.mark.slow) for n in list(TASKS)[1:])],
)
def test_writes_the_dense_picture_beside_each_prediction(tmp_path, name):
    torch.manual_seed(0)
    make_task, make_data = TASKS[name]
    out = tmp_path / "pictures"
    writer = PredictionImageWriter(output_dir=str(out), dense_vs_original=True, min_size=64)
    _predict(tmp_path, make_task(), make_data(), writer)
    expected = sorted([*NAMES, *(n.replace(".png", "_dense.png") for n in NAMES)])
    assert sorted(p.name for p in out.iterdir()) == expected
    # Input | original | dense (64 px each) and a legend or colour bar in the dense picture.
    assert expected[1] == "image_000000_dense.png"
    with Image.open(out / expected[1]) as dense:
        assert dense.width > 2 + 3 * (64 + 2) and dense.height > 64


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
def test_pictures_get_the_permissions_of_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        save_png(tmp_path / "picture.png", torch.zeros(3, 4, 4, dtype=torch.uint8))
    finally:
        os.umask(previous)
    assert (tmp_path / "picture.png").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["picture.png"]  # no temporary file left


def test_rejects_bad_arguments_and_batches(tmp_path):
    with pytest.raises(ValueError, match="min_size"):
        PredictionImageWriter(min_size=0)
    with pytest.raises(ValueError, match="score_threshold"):
        PredictionImageWriter(score_threshold=1.5)
    writer = PredictionImageWriter(output_dir=str(tmp_path))
    with pytest.raises(TypeError, match="dict batches"):
        writer.write_on_batch_end(None, None, None, None, (torch.zeros(1),), 0, 0)


def test_predict_command_writes_pictures_and_says_where(run_cli, tmp_path, caplog):
    out = tmp_path / "cli_pictures"
    caplog.set_level(logging.INFO)
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
    assert f"PredictionImageWriter: wrote 2 PNG files to {out.resolve()}" in caplog.text
