"""InverseTransferExport for image-level tasks: a plain timm classifier, loadable strictly."""

import json

import pytest
import timm
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from dense_lightning.callbacks import InverseTransferExport
from dense_lightning.equivalent import is_dense
from dense_lightning.tasks import ImageClassificationTask, ImageRegressionTask
from tests.test_tasks_image import ImageBatches


@pytest.mark.parametrize(
    ("cls", "key", "kwargs", "outputs", "metric"),
    [
        (ImageClassificationTask, "label", {"num_classes": 3}, 3, "acc"),
        (ImageRegressionTask, "target", {"target_mean": 25.0, "target_scale": 5.0}, 1, "mae"),
    ],
)
def test_export_writes_a_timm_classifier(tmp_path, cls, key, kwargs, outputs, metric):
    torch.manual_seed(0)
    task = cls(backbone="test_resnet", output_stride=8, **kwargs)
    data = ImageBatches(key)
    export = InverseTransferExport(dirpath=str(tmp_path / "exports"), num_images=2)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=task.monitor, mode=task.mode)
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=2, limit_val_batches=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[best, export],
    )  # fmt: skip
    trainer.fit(task, datamodule=data)
    directory = tmp_path / "exports"
    assert sorted(p.name for p in directory.iterdir()) == [
        "classifier_test_resnet.pth", "equivalence.json", "model_original.ckpt",
    ]  # fmt: skip
    weights = torch.load(directory / "classifier_test_resnet.pth")
    plain = timm.create_model("test_resnet", pretrained=False, num_classes=outputs).eval()
    plain.load_state_dict(weights, strict=True)
    report = json.loads((directory / "equivalence.json").read_text())
    assert report["equivalence"]["equivalent"] is True
    assert report["equivalence"]["outputs"][0]["factor"] == [4, 4]
    assert report["timm_weights"] == "classifier" and report["backbone_missing_timm_keys"] == []
    assert {f"dense_val_{metric}", f"exported_val_{metric}"} <= set(report["metrics"])
    # The exported metric of phase 0 is the dense network's phase-0 metric, by equivalence.
    dense_value = report["metrics"][f"dense_val_{metric}"]
    assert report["metrics"][f"exported_val_{metric}"] == pytest.approx(dense_value, abs=1e-5)
    # The plain timm classifier computes phase 0 of the dense network on the best weights.
    dense = cls.load_from_checkpoint(best.best_model_path).eval()
    assert is_dense(dense.model)
    images = next(iter(data.val_dataloader()))["image"]
    with torch.no_grad():
        torch.testing.assert_close(plain(images), dense.model(images)[..., 0, 0])
    fast = cls.load_from_checkpoint(directory / "model_original.ckpt")
    assert fast.hparams.output_stride is None and not is_dense(fast.model)
