"""The lattice term: the exported network's own loss, from the dense forward pass.

For every task, the term computed from the dense output's lattice subsample must equal the
loss the exported (``to_original``) network gets on the same batch, to float rounding (eval
mode: in train mode BatchNorm normalises with the dense map's statistics).
"""

import pytest
import torch
from lightning.pytorch import Trainer

from dense_lightning.data import (
    SyntheticDetectionDataModule,
    SyntheticKeypointsDataModule,
    SyntheticSegmentationDataModule,
)
from dense_lightning.equivalent import to_original
from dense_lightning.tasks import (
    ImageClassificationTask,
    ImageRegressionTask,
    KeypointEstimationTask,
    ObjectDetectionTask,
    SemanticSegmentationTask,
)
from dense_lightning.tasks.lattice import lattice_step, lattice_subsample


def _synthetic_batch(data_cls):
    def batch():
        data = data_cls(num_train=4, batch_size=4, image_size=96, seed=1)
        return next(iter(data.train_dataloader()))

    return batch


def _image_batch(key):
    def batch():
        g = torch.Generator().manual_seed(1)
        values = {
            "label": torch.randint(0, 3, (4,), generator=g),
            "target": 20 + 10 * torch.rand(4, generator=g),
        }
        return {"image": torch.randn(4, 3, 96, 96, generator=g), key: values[key]}

    return batch


TASKS = {
    "segmentation": (
        SemanticSegmentationTask, _synthetic_batch(SyntheticSegmentationDataModule),
        {"head_channels": 16},
    ),
    "detection": (
        ObjectDetectionTask, _synthetic_batch(SyntheticDetectionDataModule), {"head_channels": 16}
    ),
    "keypoints": (
        KeypointEstimationTask, _synthetic_batch(SyntheticKeypointsDataModule),
        {"head_channels": 16},
    ),
    "image_classification": (ImageClassificationTask, _image_batch("label"), {"num_classes": 3}),
    "image_regression": (
        ImageRegressionTask, _image_batch("target"), {"target_mean": 25.0, "target_scale": 5.0}
    ),
}  # fmt: skip


def _task(name, output_stride=8, **kwargs):
    task_cls, batch, extra = TASKS[name]
    torch.manual_seed(0)
    task = task_cls(backbone="resnet10t", output_stride=output_stride, **extra, **kwargs)
    return task, batch()


def _exported_loss(task, batch):
    exported = to_original(task.model).eval()
    outputs = task.run(exported, batch["image"])
    return task.weighted_loss(task.loss_terms(outputs, batch))


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("output_stride", [16, 8])
def test_lattice_term_is_the_exported_models_loss(name, output_stride):
    task, batch = _task(name, output_stride)
    task.eval()
    with torch.no_grad():
        step = task.step_loss(batch)
        expected = _exported_loss(task, batch)
        dense_only = task.weighted_loss(step.terms)
    assert step.lattice is not None
    torch.testing.assert_close(step.lattice, expected, rtol=1e-5, atol=1e-6)
    # It is a term of its own: the dense loss scores all k*k phases, and differs from the
    # exported model's loss by far more than the lattice term does.
    assert (dense_only - expected).abs() > 20 * (step.lattice - expected).abs() + 1e-6
    torch.testing.assert_close(step.total, dense_only + expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_lattice_term_weight_and_original_stride(name):
    task, batch = _task(name, lattice_loss_weight=0.0)
    with torch.no_grad():
        step = task.step_loss(batch)
    assert step.lattice is None
    torch.testing.assert_close(step.total, task.weighted_loss(step.terms))
    # At the native stride the two losses are one: nothing is added.
    original, batch = _task(name, output_stride=None, lattice_loss_weight=2.0)
    assert lattice_step(original.model) == 1
    with torch.no_grad():
        assert original.step_loss(batch).lattice is None


def test_lattice_term_weighs_and_trains():
    task, batch = _task("segmentation", lattice_loss_weight=0.5)
    step = task.step_loss(batch)
    torch.testing.assert_close(
        step.total, task.weighted_loss(step.terms) + 0.5 * step.lattice, rtol=1e-6, atol=1e-6
    )
    step.lattice.backward()
    # The lattice cells reach every weight of the network: the exported model is trained.
    grads = [p.grad for p in task.model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_lattice_subsample_maps_only():
    maps = {"a": torch.arange(64.0).view(1, 1, 8, 8), "scores": torch.ones(2, 3)}
    out = lattice_subsample([maps, (maps["a"],)], 4)
    assert out[0]["a"].shape == (1, 1, 2, 2) and out[0]["a"][0, 0, 1, 1] == 36
    assert out[0]["scores"].shape == (2, 3) and out[1][0].shape == (1, 1, 2, 2)
    assert lattice_subsample(maps, 1) is maps


def test_lattice_loss_is_logged_by_fit(tmp_path):
    task, _ = _task("segmentation")
    data = SyntheticSegmentationDataModule(
        num_train=4, num_val=2, batch_size=2, image_size=64, seed=0
    )
    trainer = Trainer(
        max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(task, datamodule=data)
    logged = trainer.callback_metrics
    assert {"train_loss_lattice", "val_loss_lattice"} <= set(logged)
    assert float(logged["val_loss"]) > float(logged["val_loss_lattice"])


def test_negative_lattice_weight_is_refused():
    with pytest.raises(ValueError, match="lattice_loss_weight must be >= 0"):
        SemanticSegmentationTask(backbone="resnet10t", lattice_loss_weight=-1.0)
