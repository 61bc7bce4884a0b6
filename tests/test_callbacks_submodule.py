"""DenseConversion and InverseTransferExport on one submodule: the encoder of an encoder-decoder."""

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dense_lightning.callbacks import DenseConversion, InverseTransferExport, restore_dense
from dense_lightning.equivalent import get_dense_info
from dense_lightning.models import DENSE_STATE_KEY


class EncoderDecoder(nn.Module):
    """An encoder to stride 8 and a head upsampled back by a factor that follows its stride."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1),
        )  # fmt: skip
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.encoder(x))
        return F.interpolate(y, size=x.shape[-2:])  # resamples by size: any encoder stride


class Module(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = EncoderDecoder()

    def training_step(self, batch, batch_idx):
        images, targets = batch
        return F.mse_loss(self.net(images), targets)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.training_step(batch, batch_idx))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    g = torch.Generator().manual_seed(0)
    images, targets = torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 2, 32, 32, generator=g)
    return DataLoader(TensorDataset(images, targets), batch_size=2)


def test_the_encoder_alone_trains_dense_and_exports_strided(tmp_path):
    module = Module()
    export = InverseTransferExport(
        dirpath=str(tmp_path / "exports"), weights="last", attribute="net", submodule="encoder",
        evaluate=False, measure_cost=False,
    )  # fmt: skip
    trainer = Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
        callbacks=[DenseConversion(2, attribute="net", submodule="encoder"), export],
    )  # fmt: skip
    trainer.fit(module, _loader(), _loader())
    info = get_dense_info(module.net.encoder)
    assert (info.output_stride, info.original_stride) == (2, 8)
    summary = export.summary
    assert summary["equivalence"]["equivalent"] and summary["submodule"] == "encoder"
    assert [p.rsplit("/", 1)[-1] for p in summary["files"]] == [
        "encoder_original.pth", "equivalence.json",
    ]  # fmt: skip
    strided = EncoderDecoder().encoder
    strided.load_state_dict(torch.load(summary["files"][0]), strict=True)
    assert strided[0].stride == (2, 2)
    path = tmp_path / "dense.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)[DENSE_STATE_KEY]["net"]
    assert state["output_stride"] == 2 and state["submodule"] == "encoder"
    loaded = restore_dense(Module.load_from_checkpoint(path), path, attribute="net")
    assert get_dense_info(loaded.net.encoder).output_stride == 2


@pytest.mark.parametrize("callback", [DenseConversion, InverseTransferExport])
def test_a_bad_submodule_name_is_refused(callback):
    with pytest.raises(ValueError, match="dotted attribute name"):
        callback(attribute="net", submodule="encoder-1")


def test_a_missing_submodule_names_the_children():
    with pytest.raises(AttributeError, match=r"no submodule 'backbone'.*\['encoder', 'head'\]"):
        DenseConversion(2, attribute="net", submodule="backbone").setup(None, Module(), "fit")
