"""Training with a dense smp encoder: a plain LightningModule and torchgeo's trainer."""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

pytest.importorskip(
    "segmentation_models_pytorch", reason="needs the [smp] extra: pip install -e '.[dev,smp]'"
)

import segmentation_models_pytorch as smp

from dense_lightning.callbacks import (
    DenseConversion,
    InverseTransferExport,
    restore_dense,
)
from dense_lightning.equivalent import get_dense_info


class Shapes(Dataset):
    """A few random images and masks, in torchgeo's sample format."""

    def __init__(self, n: int, size: int = 64, classes: int = 3) -> None:
        g = torch.Generator().manual_seed(n)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.masks = torch.randint(0, classes, (n, size, size), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "mask": self.masks[i]}


class InMemory(LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(Shapes(4), batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Shapes(2), batch_size=2)


class Segmenter(LightningModule):
    """The smallest LightningModule around an smp model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = smp.DeepLabV3Plus(
            encoder_name="tu-resnet18", encoder_weights=None, classes=3
        )  # smp's default encoder_output_stride: 16

    def training_step(self, batch: dict, _: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self.model(batch["image"]), batch["mask"])

    def validation_step(self, batch: dict, _: int) -> None:
        self.log("val_loss", self.training_step(batch, 0))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(tmp_path, *callbacks, **kwargs) -> Trainer:
    return Trainer(
        max_steps=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=list(callbacks), accelerator="cpu", **kwargs,
    )  # fmt: skip


def _callbacks(tmp_path):
    return (
        DenseConversion(8, attribute="model", submodule="encoder"),
        InverseTransferExport(
            dirpath=str(tmp_path / "exports"),
            weights="last",
            attribute="model",
            submodule="encoder",
            evaluate=False,
            measure_cost=False,
        ),
    )


def _check_export(export: InverseTransferExport, encoder_name: str, trained: nn.Module) -> None:
    summary = export.summary
    assert summary["equivalence"]["equivalent"] and summary["submodule"] == "encoder"
    assert summary["dense"]["output_stride"] == 8
    (weights,) = (f for f in summary["files"] if f.endswith("encoder_original.pth"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = smp.encoders.get_encoder(encoder_name, weights=None)  # undilated: stride 32
    fresh.load_state_dict(torch.load(weights), strict=True)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, trained.state_dict()[key]), key


def test_a_lightning_module_trains_with_a_dense_smp_encoder_and_exports_it(tmp_path):
    module = Segmenter()
    conversion, export = _callbacks(tmp_path)
    trainer = _trainer(tmp_path, conversion, export, enable_checkpointing=False)
    trainer.fit(module, datamodule=InMemory())
    assert trainer.global_step == 2
    info = get_dense_info(module.model.encoder)
    assert (info.output_stride, info.original_stride) == (8, 32)
    assert module.model.decoder.up.scale_factor == 2  # set for encoder stride 8
    _check_export(export, "tu-resnet18", module.model.encoder)
    # A checkpoint records the dense encoder; a plain load gets it back with restore_dense.
    path = tmp_path / "dense.ckpt"
    trainer.save_checkpoint(path)
    loaded = Segmenter.load_from_checkpoint(path)
    assert get_dense_info(loaded.model.encoder) is None
    restore_dense(loaded, path, attribute="model")
    assert get_dense_info(loaded.model.encoder).output_stride == 8
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.eval()(x), module.model.eval()(x))


@pytest.mark.slow  # importing torchgeo alone takes seconds
def test_torchgeo_segmentation_task_trains_two_steps_with_both_callbacks(tmp_path):
    trainers = pytest.importorskip("torchgeo.trainers", reason="needs torchgeo: the [smp] extra")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = trainers.SemanticSegmentationTask(
            model="deeplabv3+", backbone="resnet18", in_channels=3, num_classes=3
        )
    conversion, export = _callbacks(tmp_path)
    trainer = _trainer(tmp_path, conversion, export, enable_checkpointing=False)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    trainer.fit(task, datamodule=InMemory())
    assert trainer.global_step == 2
    assert get_dense_info(task.model.encoder).output_stride == 8
    assert any(not torch.equal(v, before[k]) for k, v in task.model.state_dict().items())
    _check_export(export, "resnet18", task.model.encoder)
