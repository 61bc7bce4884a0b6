import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dense_lightning.callbacks import DenseConversion, InverseTransferExport
from dense_lightning.data import SyntheticSegmentationDataModule
from dense_lightning.equivalent import NotEquivalentError, is_dense, to_dense
from dense_lightning.models import DENSE_STATE_KEY
from dense_lightning.tasks import SemanticSegmentationTask


class GlobalGate(nn.Module):
    """Squeeze-excite style gating: pools globally, so it is not convertible exactly."""

    def forward(self, x):
        return x * torch.sigmoid(x.mean(dim=(2, 3), keepdim=True))


class UserModule(LightningModule):
    """A LightningModule written by a user, not one of ours: network in ``self.net``."""

    def __init__(self, gate: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(2), GlobalGate() if gate else nn.Identity(),
            nn.Conv2d(8, 2, 3, stride=2, padding=1),
        )  # fmt: skip

    def training_step(self, batch, batch_idx):
        images, targets = batch
        out = self.net(images)
        return F.mse_loss(F.interpolate(out, size=images.shape[-2:]), targets)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.training_step(batch, batch_idx))

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1)


def _loader():
    generator = torch.Generator().manual_seed(0)
    images, targets = torch.randn(8, 3, 32, 32, generator=generator), torch.randn(8, 2, 32, 32)
    return DataLoader(TensorDataset(images, targets), batch_size=4)


def _trainer(tmp_path, callbacks, **kwargs):
    defaults = dict(
        accelerator="cpu", devices=1, max_steps=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    return Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def test_dense_conversion_on_a_user_module(tmp_path):
    module = UserModule()
    before = [p.detach().clone() for p in module.net.parameters()]
    trainer = _trainer(tmp_path, [DenseConversion(output_stride=2, attribute="net")])
    trainer.fit(module, _loader(), _loader())
    assert module.net.dense_info.output_stride == 2 and module.net.dense_info.original_stride == 8
    assert module.net(torch.randn(1, 3, 32, 32)).shape[-1] == 16
    # The optimizer trained the converted network's parameters.
    assert any(not torch.equal(a, b) for a, b in zip(before, module.net.parameters(), strict=True))
    path = tmp_path / "user.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=False)[DENSE_STATE_KEY]["net"]["output_stride"] == 2


def test_dense_conversion_is_idempotent_and_rejects_conflicts():
    module = UserModule()
    callback = DenseConversion(output_stride=4, attribute="net")
    callback.setup(None, module, "fit")
    converted = module.net
    callback.setup(None, module, "fit")
    assert module.net is converted
    with pytest.raises(ValueError, match="already dense at output stride 4"):
        DenseConversion(output_stride=2, attribute="net").setup(None, module, "fit")


def test_dense_conversion_strictness():
    module = UserModule(gate=True)
    with pytest.raises(NotEquivalentError):
        DenseConversion(output_stride=2, attribute="net").setup(None, module, "fit")
    assert not is_dense(module.net)
    DenseConversion(output_stride=2, strict=False, attribute="net").setup(None, module, "fit")
    assert module.net.dense_info.approximate


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"output_stride": 3}, ValueError), ({"attribute": "a.b"}, ValueError)],
)
def test_dense_conversion_checks_arguments(kwargs, error):
    with pytest.raises(error):
        DenseConversion(**kwargs)


def test_dense_conversion_names_a_missing_attribute():
    with pytest.raises(AttributeError, match=r"no nn.Module attribute 'model'"):
        DenseConversion().setup(None, UserModule(), "fit")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A dense task fitted for two steps with InverseTransferExport into <tmp>/exports."""
    tmp_path = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    task = SemanticSegmentationTask(
        backbone="test_resnet", num_classes=4, output_stride=8, head_channels=16
    )
    data = SyntheticSegmentationDataModule(
        num_classes=4, image_size=64, num_train=8, num_val=4, batch_size=4
    )
    callback = InverseTransferExport(dirpath=str(tmp_path / "exports"), num_images=2)
    _trainer(tmp_path, [callback], limit_val_batches=1).fit(task, data)
    return task, data, callback, tmp_path / "exports"


def test_export_equals_dense_on_the_lattice(exported):
    task, data, _, directory = exported
    assert sorted(p.name for p in directory.iterdir()) == [
        "backbone_test_resnet.pth", "equivalence.json", "model_original.ckpt",
    ]  # fmt: skip
    fast = SemanticSegmentationTask.load_from_checkpoint(directory / "model_original.ckpt")
    assert fast.hparams.output_stride is None and not is_dense(fast.model)
    assert fast.hparams.pretrained is False and fast.hparams.checkpoint_path is None
    images = next(iter(data.val_dataloader()))["image"]
    with torch.no_grad():
        dense_logits, fast_logits = task.eval().model(images), fast.eval().model(images)
    assert dense_logits.shape[-1] == 4 * fast_logits.shape[-1]
    torch.testing.assert_close(dense_logits[..., ::4, ::4], fast_logits, rtol=1e-4, atol=1e-5)


def test_export_report_and_backbone_file(exported):
    task, _, callback, directory = exported
    report = json.loads((directory / "equivalence.json").read_text())
    assert report["equivalence"]["equivalent"] is True
    assert report["dense"]["output_stride"] == 8 and report["backbone_missing_timm_keys"] == []
    assert {"dense_val_miou", "exported_val_miou"} <= set(report["metrics"])
    assert callback.summary["metrics"] == report["metrics"]
    file = directory / "backbone_test_resnet.pth"
    plain = timm.create_model("test_resnet", pretrained=False, num_classes=0, checkpoint_path=file)
    reused = SemanticSegmentationTask(backbone="test_resnet", checkpoint_path=str(file))
    trained = task.model.backbone.state_dict()
    for key, value in reused.model.backbone.state_dict().items():
        assert torch.equal(value, trained[key])
    assert torch.equal(plain.conv1[0].weight, trained["conv1.0.weight"])


def test_export_is_atomic(exported, monkeypatch):
    task, _, callback, directory = exported
    target = directory.parent / "atomic"
    callback.dirpath = str(target)
    calls = []

    def failing_save(obj, path, *args, **kwargs):
        calls.append(path)
        Path(path).write_bytes(b"partial")
        if len(calls) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        callback.export(task.trainer, task)
    assert len(calls) == 2 and list(target.iterdir()) == []


def test_export_runs_on_rank_zero_only(seg_task, tmp_path):
    callback = InverseTransferExport(dirpath=str(tmp_path / "x"))
    callback.on_fit_end(SimpleNamespace(is_global_zero=False), seg_task())
    assert callback.summary is None and not (tmp_path / "x").exists()


def test_export_refuses_a_non_equivalent_network(tmp_path):
    directory = tmp_path / "exports"
    callbacks = [
        DenseConversion(output_stride=2, strict=False, attribute="net"),
        InverseTransferExport(dirpath=str(directory), attribute="net"),
    ]
    with pytest.raises(RuntimeError, match="refused to write"):
        _trainer(tmp_path, callbacks).fit(UserModule(gate=True), _loader(), _loader())
    assert not directory.exists() or list(directory.iterdir()) == []


def test_export_of_a_user_module(tmp_path):
    directory = tmp_path / "exports"
    callbacks = [
        DenseConversion(output_stride=2, attribute="net"),
        InverseTransferExport(dirpath=str(directory), attribute="net"),
    ]
    module = UserModule()
    _trainer(tmp_path, callbacks).fit(module, _loader(), _loader())
    assert sorted(p.name for p in directory.iterdir()) == [
        "equivalence.json",
        "model_original.ckpt",
    ]
    restored = UserModule.load_from_checkpoint(directory / "model_original.ckpt")
    assert not is_dense(restored.net)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dense, fast = module.eval().net(images), restored.eval().net(images)
    torch.testing.assert_close(dense[..., ::4, ::4], fast)


def test_export_directory_resolution(tmp_path):
    callback = InverseTransferExport()
    plain = _trainer(tmp_path, [])
    assert callback.resolve_dir(plain) == tmp_path / "exports"
    logged = _trainer(tmp_path, [], logger=CSVLogger(tmp_path / "logs", name="run", version=3))
    assert callback.resolve_dir(logged) == tmp_path / "logs" / "run" / "version_3" / "exports"
    assert InverseTransferExport(dirpath="out").resolve_dir(logged) == Path("out")


@pytest.mark.parametrize("kwargs", [{"num_images": 0}, {"rtol": 0.0}, {"eval_batches": 0}])
def test_export_checks_arguments(kwargs):
    with pytest.raises(ValueError):
        InverseTransferExport(**kwargs)


def test_dense_state_key_is_written_for_native_models(seg_task):
    checkpoint = {}
    seg_task(output_stride=None).on_save_checkpoint(checkpoint)
    assert checkpoint[DENSE_STATE_KEY] == {"model": None}
    assert is_dense(to_dense(seg_task(output_stride=None).model, 8))
