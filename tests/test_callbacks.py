import dataclasses
import json
import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dense_lightning.callbacks import (
    DenseConversion,
    InverseTransferExport,
    dense_conversion,
    restore_dense,
)
from dense_lightning.callbacks import export as export_module
from dense_lightning.data import SyntheticSegmentationDataModule
from dense_lightning.equivalent import NotEquivalentError, get_dense_info, is_dense, to_dense
from dense_lightning.errors import ConfigurationError
from dense_lightning.models import DENSE_STATE_KEY
from dense_lightning.tasks import SemanticSegmentationTask


class UserModule(LightningModule):
    """A LightningModule written by a user, not one of ours: network in ``self.net``."""

    def __init__(self, reflect: bool = False):
        super().__init__()
        self.save_hyperparameters()
        mode = "reflect" if reflect else "zeros"
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, stride=2, padding=1, padding_mode=mode),
            nn.Conv2d(8, 2, 3, padding=1),
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
    with pytest.raises(ConfigurationError, match="already dense at output stride 4"):
        DenseConversion(output_stride=2, attribute="net").setup(None, module, "fit")


def test_dense_conversion_strictness(monkeypatch):
    module = UserModule(reflect=True)  # reflect padding cannot be given holes
    with pytest.raises(NotEquivalentError):
        DenseConversion(output_stride=2, attribute="net").setup(None, module, "fit")
    assert not is_dense(module.net)
    seen = []

    def make_dense(network, output_stride, *, strict, method, submodule=None):
        seen.append(strict)
        return network

    monkeypatch.setattr(dense_conversion, "make_dense", make_dense)
    DenseConversion(output_stride=2, strict=False, attribute="net").setup(None, module, "fit")
    assert seen == [False]


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
    save = torch.save

    def failing_save(obj, path, *args, **kwargs):
        if not str(path).startswith(str(target)):
            return save(obj, path, *args, **kwargs)  # Lightning's own checkpoint of the weights
        calls.append(path)
        Path(path).write_bytes(b"partial")
        if len(calls) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        callback.export(task.trainer, task)
    assert len(calls) == 2 and list(target.iterdir()) == []


def test_export_writes_on_rank_zero_only_but_saves_collectively(seg_task, tmp_path):
    saved = []
    trainer = SimpleNamespace(
        is_global_zero=False, checkpoint_callback=None,
        # Rank zero's scratch directory arrives by broadcast.
        strategy=SimpleNamespace(broadcast=lambda obj: str(tmp_path) if obj is None else obj),
        save_checkpoint=lambda path, weights_only: saved.append((path, weights_only)),
    )  # fmt: skip
    callback = InverseTransferExport(dirpath=str(tmp_path / "x"))
    callback.on_fit_end(trainer, seg_task())
    assert len(saved) == 1 and saved[0][1] is True  # every rank takes part in the save
    assert callback.summary is None and not (tmp_path / "x").exists()


def _make_inexact(monkeypatch, approximate):
    """Conversion marks the network approximate or not; the export differs from it for real."""
    real_to_original = export_module.to_original

    def perturbed_to_original(network):
        original = real_to_original(network)
        with torch.no_grad():
            original[-1].bias.add_(0.5)
        return original

    class Mark(Callback):
        def setup(self, trainer, pl_module, stage):
            info = get_dense_info(pl_module.net)
            pl_module.net.dense_info = dataclasses.replace(info, approximate=approximate)

    monkeypatch.setattr(export_module, "to_original", perturbed_to_original)
    return Mark()


def test_export_refuses_a_network_converted_as_exact_that_is_not(tmp_path, monkeypatch):
    directory = tmp_path / "exports"
    callbacks = [
        DenseConversion(output_stride=2, attribute="net"),
        _make_inexact(monkeypatch, approximate=False),
        InverseTransferExport(dirpath=str(directory), attribute="net"),
    ]
    with pytest.raises(RuntimeError, match="refused to write"):
        _trainer(tmp_path, callbacks).fit(UserModule(), _loader(), _loader())
    assert not directory.exists() or list(directory.iterdir()) == []


def test_an_approximate_network_is_announced_at_fit_start_and_exported_labelled(
    tmp_path, monkeypatch, caplog
):
    directory = tmp_path / "exports"
    steps_at_announcement = []

    class Watch(Callback):
        def on_train_batch_start(self, trainer, *args):
            if not steps_at_announcement:
                steps_at_announcement.append("approximate" in caplog.text)

    export = InverseTransferExport(dirpath=str(directory), attribute="net")
    callbacks = [
        DenseConversion(output_stride=2, strict=False, attribute="net"),
        _make_inexact(monkeypatch, approximate=True), export, Watch(),
    ]  # fmt: skip
    trainer = _trainer(tmp_path, callbacks)
    with caplog.at_level(logging.INFO):
        trainer.fit(UserModule(), _loader(), _loader())
    assert steps_at_announcement == [True]  # said before the first step
    assert trainer.global_step == 2  # trained to the end, then exported
    report = json.loads((directory / "equivalence.json").read_text())
    assert report["approximate"] is True and not report["equivalence"]["equivalent"]
    assert report["equivalence"]["max_rel_error"] > 1e-3
    assert (directory / "model_original.ckpt").is_file()
    assert "approximate: max relative error" in caplog.text


class StepModule(UserModule):
    """Logs its own step as the monitored value: the best checkpoint is the first one."""

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self.log("val_step", float(self.global_step))


def _fit_with_checkpoints(tmp_path, export, epochs=3):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_step", mode="min")
    callbacks = [DenseConversion(output_stride=2, attribute="net"), checkpoint, export]
    module = StepModule()
    trainer = _trainer(
        tmp_path, callbacks, max_steps=-1, max_epochs=epochs, enable_checkpointing=True
    )
    trainer.fit(module, _loader(), _loader())
    return trainer, module, checkpoint


def _exported_weights(directory):
    return torch.load(directory / "model_original.ckpt", weights_only=False)


@pytest.mark.slow
def test_export_holds_the_best_checkpoint_by_default(tmp_path):
    export = InverseTransferExport(dirpath=str(tmp_path / "exports"), attribute="net")
    trainer, module, checkpoint = _fit_with_checkpoints(tmp_path, export)
    best = torch.load(checkpoint.best_model_path, weights_only=False)
    assert best["global_step"] == 2 < trainer.global_step == 6
    exported = _exported_weights(tmp_path / "exports")
    assert exported["global_step"] == 2 and "optimizer_states" not in exported
    for key, value in best["state_dict"].items():
        assert torch.equal(exported["state_dict"][key], value), key
    assert not torch.equal(exported["state_dict"]["net.0.weight"], module.net[0].weight)
    weights = export.summary["weights"]
    assert weights["kind"] == "best" and weights["checkpoint"] == checkpoint.best_model_path
    assert weights["global_step"] == 2 and "best val_step" in weights["note"]
    # The exported model computes what the best dense weights compute, on the lattice.
    restored = StepModule.load_from_checkpoint(tmp_path / "exports" / "model_original.ckpt")
    dense = StepModule.load_from_checkpoint(checkpoint.best_model_path)
    restore_dense(dense, checkpoint.best_model_path, attribute="net")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            dense.eval().net(images)[..., ::4, ::4], restored.eval().net(images)
        )


def test_export_of_the_last_weights_and_the_fallback_without_a_best(tmp_path):
    last = InverseTransferExport(dirpath=str(tmp_path / "last"), attribute="net", weights="last")
    trainer, module, _ = _fit_with_checkpoints(tmp_path, last, epochs=1)
    exported = _exported_weights(tmp_path / "last")
    assert exported["global_step"] == trainer.global_step == 2
    assert torch.equal(exported["state_dict"]["net.0.weight"], module.net[0].weight)
    assert last.summary["weights"]["kind"] == "last"
    assert last.summary["weights"]["checkpoint"] is None
    assert "weights=last" in last.summary["weights"]["note"]
    # No ModelCheckpoint at all: the final weights, with the reason.
    fallback = InverseTransferExport(dirpath=str(tmp_path / "fallback"), attribute="net")
    callbacks = [DenseConversion(output_stride=2, attribute="net"), fallback]
    _trainer(tmp_path, callbacks).fit(UserModule(), _loader(), _loader())
    assert fallback.summary["weights"]["kind"] == "last"
    assert "no best checkpoint" in fallback.summary["weights"]["note"]
    assert (tmp_path / "fallback" / "model_original.ckpt").is_file()
    assert not list(tmp_path.glob("**/final.ckpt"))


def test_export_files_respect_the_umask(exported):
    _, _, _, directory = exported
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
    mask = os.umask(0)
    os.umask(mask)
    assert set(modes.values()) == {0o666 & ~mask}


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


def _dense_user_checkpoint(tmp_path):
    """A user module trained dense at stride 2 and its checkpoint."""
    module = UserModule()
    trainer = _trainer(tmp_path, [DenseConversion(output_stride=2, attribute="net")])
    trainer.fit(module, _loader(), _loader())
    path = tmp_path / "user.ckpt"
    trainer.save_checkpoint(path)
    return module, path


class RestoringModule(UserModule):
    def on_load_checkpoint(self, checkpoint):
        restore_dense(self, checkpoint, attribute="net")


def test_restore_dense_gives_back_the_trained_dense_network(tmp_path):
    module, path = _dense_user_checkpoint(tmp_path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = module.eval().net(images)
    plain = UserModule.load_from_checkpoint(path)
    assert not is_dense(plain.net)  # what load_from_checkpoint alone builds
    for loaded in (
        restore_dense(plain, path, attribute="net"),
        RestoringModule.load_from_checkpoint(path),
    ):
        assert get_dense_info(loaded.net).output_stride == 2
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval().net(images), expected)
    with pytest.raises(ConfigurationError, match="no dense structure for 'model'"):
        restore_dense(UserModule(), path)


def test_dense_conversion_on_load_checkpoint(tmp_path):
    _, path = _dense_user_checkpoint(tmp_path)
    # Evaluating at another stride is the same network: allowed.
    evaluator = _trainer(tmp_path, [DenseConversion(output_stride=4, attribute="net")])
    module = UserModule()
    evaluator.validate(module, _loader(), ckpt_path=path)
    assert get_dense_info(module.net).output_stride == 4
    # Resuming a fit at another stride is refused, with what to do.
    resumer = _trainer(tmp_path, [DenseConversion(output_stride=4, attribute="net")], max_steps=4)
    with pytest.raises(ConfigurationError, match="resume with output_stride=2"):
        resumer.fit(UserModule(), _loader(), _loader(), ckpt_path=path)
    same = _trainer(tmp_path, [DenseConversion(output_stride=2, attribute="net")], max_steps=4)
    same.fit(UserModule(), _loader(), _loader(), ckpt_path=path)
    assert same.global_step == 4


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
