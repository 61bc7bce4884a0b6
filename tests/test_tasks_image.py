"""Image-level tasks: a whole timm classifier, its k*k phases trained, phase 0 exported."""

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader

from dense_lightning.equivalent import to_original
from dense_lightning.tasks import ImageClassificationTask, ImageRegressionTask
from dense_lightning.tasks.image import phases


class ImageBatches(LightningDataModule):
    """Random images with a label (``key="label"``) or a scalar target (``key="target"``)."""

    def __init__(self, key: str, num_classes: int = 3, size: int = 64, num: int = 8) -> None:
        super().__init__()
        self.key, self.num_classes, self.size, self.num = key, num_classes, size, num

    def _loader(self, seed: int) -> DataLoader:
        g = torch.Generator().manual_seed(seed)
        samples = []
        for _ in range(self.num):
            image = torch.randn(3, self.size, self.size, generator=g)
            value = (
                torch.randint(0, self.num_classes, (), generator=g)
                if self.key == "label"
                else 20 + 10 * torch.rand((), generator=g)
            )
            samples.append({"image": image, self.key: value})
        return DataLoader(samples, batch_size=4)

    def train_dataloader(self) -> DataLoader:
        return self._loader(0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(2)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(3)


def _batch(key: str, size: int = 64) -> dict:
    return next(iter(ImageBatches(key, size=size).train_dataloader()))


def _trainer(tmp_path, **kwargs):
    defaults = dict(
        accelerator="cpu", devices=1, max_steps=2, limit_val_batches=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    return Trainer(**{**defaults, **kwargs})


@pytest.mark.parametrize("output_stride", [8, 16])
def test_classification_loss_is_the_mean_over_phases(output_stride):
    torch.manual_seed(0)
    task = ImageClassificationTask(
        backbone="test_resnet", num_classes=3, output_stride=output_stride
    ).eval()
    batch = _batch("label")
    k = 32 // output_stride
    with torch.no_grad():
        raw = task.model(batch["image"])
        step = task.step_loss(batch)
        exported = to_original(task.model).eval()(batch["image"])
    assert raw.shape == (4, 3, k, k) and step.outputs.shape == (4, 3, k * k)
    per_phase = [
        F.cross_entropy(raw[..., i, j], batch["label"]) for i in range(k) for j in range(k)
    ]
    torch.testing.assert_close(step.terms["loss"], torch.stack(per_phase).mean())
    # Phase 0 is the exported classifier: its loss is the lattice term.
    torch.testing.assert_close(raw[..., 0, 0], exported, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step.lattice, F.cross_entropy(exported, batch["label"]))
    # acc scores phase 0, acc_phase_mean the logits averaged over the phases.
    task.update_metrics(task.val_metrics, step.outputs, batch)
    values = task.val_metrics.compute()
    acc = (exported.argmax(1) == batch["label"]).float().mean()
    mean_acc = (raw.mean((2, 3)).argmax(1) == batch["label"]).float().mean()
    torch.testing.assert_close(values["val_acc"], acc)
    torch.testing.assert_close(values["val_acc_phase_mean"], mean_acc)
    assert (task.monitor, task.mode) == ("val_acc", "max")


def test_regression_normalises_targets_and_denormalises_predictions():
    torch.manual_seed(0)
    task = ImageRegressionTask(
        backbone="test_resnet", output_stride=16, target_mean=25.0, target_scale=5.0
    ).eval()
    batch = _batch("target")
    with torch.no_grad():
        raw = task.model(batch["image"])
        step = task.step_loss(batch)
    assert raw.shape == (4, 1, 2, 2)
    normalised = (batch["target"] - 25.0) / 5.0
    expected = (raw.flatten(1) - normalised[:, None]).abs().mean()
    torch.testing.assert_close(step.terms["loss"], expected)
    predicted = task.predict_step(batch, 0)
    torch.testing.assert_close(predicted["prediction"], raw[:, 0, 0, 0] * 5.0 + 25.0)
    torch.testing.assert_close(predicted["prediction_phase_mean"], raw.mean((1, 2, 3)) * 5 + 25)
    task.update_metrics(task.val_metrics, step.outputs, batch)
    values = task.val_metrics.compute()
    torch.testing.assert_close(
        values["val_mae"], (predicted["prediction"] - batch["target"]).abs().mean()
    )
    torch.testing.assert_close(
        values["val_mae_phase_mean"],
        (predicted["prediction_phase_mean"] - batch["target"]).abs().mean(),
    )
    l2 = ImageRegressionTask(backbone="test_resnet", output_stride=16, loss="l2").eval()
    with torch.no_grad():
        out = l2.model(batch["image"]).flatten(1)
        torch.testing.assert_close(
            l2.step_loss(batch).terms["loss"], ((out - batch["target"][:, None]) ** 2).mean()
        )
    assert (task.monitor, task.mode) == ("val_mae", "min")


def test_native_stride_has_one_phase():
    task = ImageClassificationTask(backbone="test_resnet", num_classes=3).eval()
    batch = _batch("label")
    with torch.no_grad():
        step = task.step_loss(batch)
    assert step.outputs.shape == (4, 3, 1) and step.lattice is None
    predicted = task.predict_step(batch, 0)
    assert torch.equal(predicted["prediction"], predicted["prediction_phase_mean"])


def test_phases_layout_and_bad_shapes():
    raw = torch.arange(8.0).view(1, 2, 2, 2)  # [B, C, k, k]: phase (0, 1) is the second
    assert phases(raw).shape == (1, 2, 4) and phases(raw)[0, :, 1].tolist() == [1.0, 5.0]
    with pytest.raises(ValueError, match=r"\[B, C, k, k\]"):
        phases(torch.zeros(2, 3, 4))
    task = ImageClassificationTask(backbone="test_resnet", num_classes=3)
    with pytest.raises(ValueError, match="labels int64"):
        task.loss_terms(torch.zeros(4, 3, 1), {"label": torch.zeros(4, 1, dtype=torch.long)})


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (ImageClassificationTask, {"num_classes": 1}, "num_classes must be >= 2"),
        (ImageClassificationTask, {"label_smoothing": 1.0}, "label_smoothing"),
        (ImageRegressionTask, {"target_scale": 0.0}, "target_scale must be > 0"),
        (ImageRegressionTask, {"loss": "huber"}, "Unknown loss 'huber'"),
        (ImageRegressionTask, {"checkpoint_path": "/nonexistent.pth"}, "is not a file"),
    ],
)
def test_bad_arguments_are_named(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(backbone="test_resnet", **kwargs)


def test_freeze_backbone_trains_the_classifier_only():
    task = ImageClassificationTask(
        backbone="mobilenetv3_small_050", num_classes=3, output_stride=16, freeze_backbone=True
    )
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    task.train()
    assert not task.model.blocks.training and task.model.classifier.training


def test_checkpoint_path_starts_from_a_classifiers_weights(tmp_path):
    source = ImageClassificationTask(backbone="test_resnet", num_classes=3, output_stride=8)
    weights, missing = source.timm_backbone_state_dict(network=to_original(source.model))
    assert missing == []
    torch.save(weights, tmp_path / "w.pth")
    task = ImageClassificationTask(
        backbone="test_resnet", num_classes=3, checkpoint_path=str(tmp_path / "w.pth")
    )
    assert torch.equal(task.model.conv1[0].weight, weights["conv1.0.weight"])


@pytest.mark.parametrize(
    ("cls", "key", "kwargs", "metric"),
    [
        (ImageClassificationTask, "label", {"num_classes": 3}, "acc"),
        (ImageRegressionTask, "target", {"target_mean": 25.0, "target_scale": 5.0}, "mae"),
    ],
)
def test_fit_validate_test_predict(tmp_path, cls, key, kwargs, metric):
    torch.manual_seed(0)
    task = cls(backbone="test_resnet", output_stride=16, **kwargs)
    data = ImageBatches(key)
    trainer = _trainer(tmp_path)
    trainer.fit(task, datamodule=data)
    logged = trainer.callback_metrics
    expected = {f"val_{metric}", f"val_{metric}_phase_mean", "val_loss", "val_loss_lattice"}
    assert expected <= set(logged)
    assert {"train_loss", "train_loss_lattice"} <= set(logged)
    tested = trainer.test(task, datamodule=data, verbose=False)[0]
    assert {f"test_{metric}", f"test_{metric}_phase_mean"} <= set(tested)
    predicted = trainer.predict(task, datamodule=data)
    assert len(predicted) == 2 and predicted[0]["prediction"].shape == (4,)
    assert predicted[0]["prediction_phase_mean"].shape == (4,)
