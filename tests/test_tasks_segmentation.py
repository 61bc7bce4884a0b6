import math

import pytest
import timm
import torch
from lightning.pytorch import Trainer

from dense_lightning.equivalent import is_dense, to_dense, to_original, verify_equivalence
from dense_lightning.models import DENSE_STATE_KEY, create_backbone, timm_state_dict
from dense_lightning.tasks import SemanticSegmentationTask
from dense_lightning.tasks.optim import lr_factor as _lr_factor


def _trainer(tmp_path, **kwargs):
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    return Trainer(**{**defaults, **kwargs})


def test_hparams_are_flat_and_complete(seg_task):
    task = seg_task(lr=0.01, optimizer="sgd")
    hp = dict(task.hparams)
    assert hp["backbone"] == "test_resnet" and hp["output_stride"] == 8 and hp["lr"] == 0.01
    assert {"num_classes", "head", "ignore_index", "class_weights", "scheduler"} <= set(hp)
    assert all(not isinstance(v, dict) for v in hp.values())
    assert task.monitor == "val_miou" and task.mode == "max"


@pytest.mark.parametrize("head", ["fcn", "aspp", "linear"])
@pytest.mark.parametrize("output_stride", [None, 16, 8])
def test_forward_shapes_and_structure(seg_task, head, output_stride):
    task = seg_task(head=head, output_stride=output_stride).eval()
    images = torch.randn(2, 3, 64, 64)
    side = 64 // (output_stride or 32)
    assert task.model(images).shape == (2, 4, side, side)
    assert task(images).shape == (2, 4, 64, 64)
    assert is_dense(task.model) == (output_stride is not None)
    assert task.predict_step({"image": images}, 0).dtype == torch.int64


@pytest.mark.parametrize("head", ["fcn", "aspp"])
def test_dense_model_equals_original_on_lattice(seg_task, head):
    task = seg_task(head=head).eval()
    original = to_original(task.model).eval()
    images = torch.randn(2, 3, 64, 64)
    report = verify_equivalence(original, task.model, images)
    assert report.equivalent, str(report)
    with torch.no_grad():
        assert torch.allclose(task.model(images)[..., ::4, ::4], original(images), atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"backbone": "resnet181"}, r"Unknown backbone 'resnet181'.*resnet18"),
        ({"output_stride": 3}, "power of two"),
        ({"output_stride": 64}, "not reachable"),
        ({"class_weights": [1.0, 2.0]}, "class_weights has 2 values"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"head": "unet"}, "Unknown head 'unet'; choose one of 'fcn', 'aspp', 'linear'"),
        # Every Literal argument of the __init__ chain is checked, BaseTask's included.
        ({"optimizer": "lamb"}, "Unknown optimizer 'lamb'; choose one of 'adamw'"),
        ({"scheduler": "onecycle"}, "Unknown scheduler 'onecycle'"),
        ({"lr": 0.0}, "lr > 0"),
    ],
)
def test_bad_arguments_fail_early(seg_task, overrides, match):
    with pytest.raises(ValueError, match=match):
        seg_task(**overrides)


def test_data_mismatch_fails_in_setup(seg_task, seg_data, tmp_path):
    with pytest.raises(ValueError, match="num_classes=3"):
        _trainer(tmp_path, fast_dev_run=True).fit(seg_task(), seg_data(num_classes=3))


def test_class_weights_and_ignore_index_reach_the_loss(seg_task):
    task = seg_task(class_weights=[0.1, 1.0, 1.0, 1.0], ignore_index=255)
    assert torch.allclose(task.criterion.weight, torch.tensor([0.1, 1.0, 1.0, 1.0]))
    logits = torch.randn(1, 4, 4, 4)
    mask = torch.full((1, 4, 4), 255)
    mask[0, 0, 0] = 2
    only_one = task.compute_loss(logits, {"mask": mask})
    expected = torch.nn.functional.cross_entropy(logits[..., 0, 0], torch.tensor([2]))
    assert torch.allclose(only_one, expected)


def test_freeze_backbone_keeps_weights_and_statistics(seg_task):
    task = seg_task(freeze_backbone=True).train()
    assert not any(p.requires_grad for p in task.model.backbone.parameters())
    assert all(p.requires_grad for p in task.model.head.parameters())
    assert not task.model.backbone.training and task.model.head.training


@pytest.mark.parametrize("kind", ["cosine", "poly", "step", "none"])
def test_lr_schedules(kind):
    factors = [_lr_factor(kind, s, total=100, warmup=10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(0.0 <= f <= 1.0 for f in factors)
    if kind != "none":
        assert factors[-1] < 0.05 or (kind == "step" and factors[-1] == pytest.approx(0.01))
    assert math.isclose(_lr_factor("none", 50, 100, 0), 1.0)


@pytest.mark.parametrize(
    ("optimizer", "scheduler"), [("adamw", "cosine"), ("sgd", "poly"), ("adam", "step")]
)
def test_fit_validate_test_predict(seg_task, seg_data, tmp_path, optimizer, scheduler):
    task, data = seg_task(optimizer=optimizer, scheduler=scheduler, warmup_steps=1), seg_data()
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(task, data)
    assert {"train_loss_step", "val_loss", "val_miou", "val_pixel_acc"} <= set(
        trainer.callback_metrics
    )
    assert trainer.test(task, data, verbose=False)[0]["test_miou"] >= 0
    maps = trainer.predict(task, data)
    assert maps[0].shape == (4, 32, 32) and maps[0].dtype == torch.int64


def test_evaluate_scores_a_given_network_and_restores_the_model(seg_task, seg_data):
    task, data = seg_task(), seg_data()
    data.setup("validate")
    model = task.model
    original = to_original(model)
    scores = task.evaluate(data.val_dataloader(), network=original)
    assert set(scores) == {"miou", "pixel_acc"}
    assert task.model is model and task.training


def test_load_from_checkpoint_mid_training_gives_dense_model(seg_task, seg_data, tmp_path):
    task = seg_task()
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(task, seg_data())
    path = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint[DENSE_STATE_KEY]["model"]["output_stride"] == 8
    restored = SemanticSegmentationTask.load_from_checkpoint(path)
    assert restored.model.dense_info.output_stride == 8
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored.eval()(images), task.eval()(images))


def test_checkpoint_structure_wins_over_hparams(seg_task):
    dense = seg_task(output_stride=8)
    checkpoint = {"state_dict": dense.state_dict()}
    dense.on_save_checkpoint(checkpoint)

    native = seg_task(output_stride=None)
    native.on_load_checkpoint(checkpoint)  # saved dense -> loads dense
    assert native.model.dense_info.output_stride == 8
    native.load_state_dict(checkpoint["state_dict"])

    other = seg_task(output_stride=16)
    other.on_load_checkpoint(checkpoint)  # saved at 8 -> back to original, then 8
    assert other.model.dense_info.output_stride == 8

    back = seg_task(output_stride=8)
    back.on_load_checkpoint({DENSE_STATE_KEY: {"model": None}})  # saved original
    assert not is_dense(back.model)

    untouched = seg_task(output_stride=8)
    untouched.on_load_checkpoint({})  # foreign checkpoint: keep the hparams' structure
    assert untouched.model.dense_info.output_stride == 8


@pytest.mark.parametrize("name", ["resnet10t", "convnext_atto", "regnetx_002"])
def test_backbone_weights_map_to_plain_timm_names(name):
    backbone = create_backbone(name)
    state, missing = timm_state_dict(to_dense(backbone, 8), name)
    plain = timm.create_model(name, pretrained=False, num_classes=0)
    result = plain.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == missing and not result.unexpected_keys
    assert all(k.startswith("head.") for k in missing)  # ConvNeXt's pre-logits norm only
    for key, value in state.items():
        assert torch.equal(plain.state_dict()[key], value)


def test_checkpoints_do_not_reload_starting_weights(seg_task, tmp_path):
    weights = tmp_path / "backbone.pth"
    torch.save(timm_state_dict(create_backbone("test_resnet"), "test_resnet")[0], weights)
    checkpoint = {SemanticSegmentationTask.CHECKPOINT_HYPER_PARAMS_KEY: {}}
    task = seg_task(checkpoint_path=str(weights))
    checkpoint[task.CHECKPOINT_HYPER_PARAMS_KEY] = dict(task.hparams)
    task.on_save_checkpoint(checkpoint)
    saved = checkpoint[task.CHECKPOINT_HYPER_PARAMS_KEY]
    assert saved["checkpoint_path"] is None and saved["pretrained"] is False
    assert task.hparams.checkpoint_path == str(weights)  # the live hparams are untouched
