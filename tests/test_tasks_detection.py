import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from PIL import Image

from dense_lightning.data import SyntheticDetectionDataModule
from dense_lightning.equivalent import to_original, verify_equivalence
from dense_lightning.tasks import ObjectDetectionTask

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "detection"


def _batch(size=64, seed=0):
    dm = SyntheticDetectionDataModule(num_train=4, batch_size=4, image_size=size, seed=seed)
    return next(iter(dm.train_dataloader()))


def test_dense_head_has_more_cells_and_inverse_transfer_matches_on_lattice():
    torch.manual_seed(0)
    dense_task = ObjectDetectionTask(backbone="resnet18", output_stride=8).eval()
    images = _batch()["image"]
    with torch.no_grad():
        dense_out = dense_task(images)
        original = to_original(dense_task.model).eval()
        original_out = original(images)
    k = 32 // 8
    for name in ("heatmap", "size", "offset"):
        assert dense_out[name].shape[-2:] == (8, 8)
        assert original_out[name].shape[-2:] == (2, 2)
        torch.testing.assert_close(
            dense_out[name][..., ::k, ::k], original_out[name], atol=1e-5, rtol=1e-4
        )
    assert dense_task.geometry(images, dense_out["heatmap"]).stride == (8, 8)
    assert dense_task.geometry(images, original_out["heatmap"]).stride == (32, 32)
    assert verify_equivalence(original, dense_task.model, images[:2]).equivalent


@pytest.mark.parametrize("output_stride", [None, 16, 8])
def test_same_task_trains_dense_or_original(output_stride):
    torch.manual_seed(0)
    task = ObjectDetectionTask(backbone="resnet10t", output_stride=output_stride)
    batch = _batch(size=70)  # odd sizes too: the stride comes from the map, not from H / h
    outputs = task(batch["image"])
    terms = task.loss_terms(outputs, batch)
    assert set(terms) == {"heatmap", "size", "offset"}
    loss = task.compute_loss(outputs, batch)
    loss.backward()
    assert torch.isfinite(loss)
    # Every head branch gets a gradient, at any stride.
    assert all(p.grad is not None for p in task.model.head.parameters())
    task.eval()
    results = task.predict_step(batch, 0)
    assert len(results) == 4
    for result, image_id in zip(results, batch["image_id"], strict=True):
        assert result["boxes"].shape[-1] == 4 and result["image_id"] == image_id
        assert result["boxes"].min() >= 0 and result["boxes"].max() <= 70
        torch.testing.assert_close(result["orig_boxes"], result["boxes"])  # scale is 1


def test_bad_hyperparameters_fail_before_training():
    with pytest.raises(ValueError, match="Unknown head 'fcos'"):
        ObjectDetectionTask(head="fcos")
    with pytest.raises(ValueError, match="num_classes"):
        ObjectDetectionTask(num_classes=0)
    with pytest.raises(ValueError, match="Loss weights"):
        ObjectDetectionTask(size_weight=-1.0)
    with pytest.raises(ValueError, match="score_threshold"):
        ObjectDetectionTask(score_threshold=2.0)
    with pytest.raises(ValueError, match="Unknown backbone"):
        ObjectDetectionTask(backbone="resnet_does_not_exist")


def test_num_classes_mismatch_with_data_fails_in_setup(tmp_path):
    task = ObjectDetectionTask(backbone="resnet10t", num_classes=3)
    dm = SyntheticDetectionDataModule(num_classes=2, num_train=4, num_val=4, batch_size=2)
    trainer = Trainer(fast_dev_run=True, default_root_dir=tmp_path, logger=False)
    with pytest.raises(ValueError, match=r"num_classes=2 .* num_classes=3"):
        trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 0


def test_evaluate_scores_the_exported_model_at_its_own_stride():
    torch.manual_seed(0)
    task = ObjectDetectionTask(backbone="resnet10t", output_stride=8)
    dm = SyntheticDetectionDataModule(num_val=8, batch_size=4)
    dense = task.evaluate(dm.val_dataloader())
    exported = task.evaluate(dm.val_dataloader(), network=to_original(task.model))
    assert set(dense) == set(exported) == {"map", "map_50", "map_75"}


# ---------------------------------------------------------------------------------------------
# The configs, through the real CLI.

SMALL_RUN = [
    "--trainer.accelerator=cpu",
    "--trainer.fast_dev_run=true",
    "--trainer.enable_progress_bar=false",
    "--model.init_args.backbone=test_resnet",
    "--model.init_args.pretrained=false",
    "--model.init_args.head_channels=16",
    "--data.init_args.batch_size=2",
    "--data.init_args.num_workers=0",
]


def write_tiny_coco_detection(root: Path, num_images: int = 3) -> None:
    """A COCO detection dataset of a few PNG/JPEG images with two categories."""
    gen = torch.Generator().manual_seed(0)
    images, annotations = [], []
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        for i in range(num_images):
            image_id = len(images) + 1
            width, height = 80 + 8 * i, 64
            name = f"{image_id:04d}.{'png' if i % 2 else 'jpg'}"
            pixels = (torch.rand(height, width, 3, generator=gen) * 255).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / split / name)
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            for j in range(2):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": [3, 7][j],
                        "bbox": [5.0 + 30 * j, 8.0, 20.0, 24.0 + j],
                        "area": 480.0,
                        "iscrowd": 0,
                    }
                )
        ann = {
            "images": [im for im in images if (root / split / im["file_name"]).exists()],
            "annotations": annotations,
            "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "truck"}],
        }
        ids = {im["id"] for im in ann["images"]}
        ann["annotations"] = [a for a in annotations if a["image_id"] in ids]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{split}.json").write_text(json.dumps(ann))


def test_coco_config_refuses_wrong_num_classes(run_cli, tmp_path, capsys):
    root = tmp_path / "coco"
    write_tiny_coco_detection(root)
    args = [
        f"--config={CONFIGS / 'coco.yaml'}",
        *SMALL_RUN,
        f"--data.init_args.root={root}",
        "--data.init_args.train_ann=annotations/train.json",
        "--data.init_args.val_ann=annotations/val.json",
        "--data.init_args.train_images=train",
        "--data.init_args.val_images=val",
    ]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *args)  # the config says 80 classes, the data has 2
    # A configuration error: one line naming the fix, exit status 2.
    assert exit_info.value.code == 2
    assert "set model.init_args.num_classes=2" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Learning.


@pytest.mark.slow
def test_a_few_dozen_steps_beat_the_untrained_model(tmp_path):
    seed_everything(0)
    dm = SyntheticDetectionDataModule(num_train=40 * 16, num_val=32, batch_size=16)
    # The dense model's own learning: the lattice term trades dense accuracy for the
    # export's and slows this short run down (benchmarks/README.md measures both).
    task = ObjectDetectionTask(
        backbone="resnet18", output_stride=8, lr=3e-3, warmup_steps=5, lattice_loss_weight=0.0
    )
    dm.setup("fit")
    before = task.evaluate(dm.val_dataloader())
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
    )
    trainer.fit(task, datamodule=dm)
    after = task.evaluate(dm.val_dataloader())
    assert after["map_50"] > before["map_50"] + 0.05, (before, after)
