import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from PIL import Image

from dense_lightning.data import SyntheticKeypointsDataModule
from dense_lightning.equivalent import to_original
from dense_lightning.tasks import KeypointEstimationTask

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "keypoints"
COCO_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip


def _batch(size=64, batch_size=4):
    dm = SyntheticKeypointsDataModule(num_train=batch_size, batch_size=batch_size, image_size=size)
    return next(iter(dm.train_dataloader()))


def test_dense_pose_outputs_equal_the_inverse_transferred_model_on_the_lattice():
    torch.manual_seed(0)
    task = KeypointEstimationTask(backbone="resnet10t", output_stride=8).eval()
    images = _batch()["image"]
    with torch.no_grad():
        dense_out = task(images)
        original_out = to_original(task.model).eval()(images)
    assert set(dense_out) == {"heatmap", "size", "offset", "keypoint_heatmap", "displacement"}
    assert dense_out["keypoint_heatmap"].shape == (4, 13, 8, 8)
    assert original_out["keypoint_heatmap"].shape == (4, 13, 2, 2)
    for name, value in dense_out.items():
        torch.testing.assert_close(value[..., ::4, ::4], original_out[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("output_stride", [None, 8])
def test_loss_terms_and_predictions_at_any_stride(output_stride):
    torch.manual_seed(0)
    task = KeypointEstimationTask(backbone="resnet10t", output_stride=output_stride)
    batch = _batch()
    outputs = task(batch["image"])
    terms = task.loss_terms(outputs, batch)
    assert set(terms) == set(task.loss_names)
    loss = task.compute_loss(outputs, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in task.model.head.parameters())
    task.eval()
    for result in task.predict_step(batch, 0):
        assert result["keypoints"].shape[1:] == (13, 3)
        assert result["orig_keypoints"].shape == result["keypoints"].shape
        assert len(result["boxes"]) == len(result["scores"]) == len(result["keypoints"])


def test_unlabelled_keypoints_do_not_change_the_loss():
    torch.manual_seed(0)
    task = KeypointEstimationTask(backbone="resnet10t", output_stride=8)
    batch = _batch()
    kpts = batch["keypoints"][0].clone()
    kpts[0, 3] = torch.tensor([20.0, 30.0, 0.0])  # unlabelled: coordinates must not matter
    moved = kpts.clone()
    moved[0, 3, :2] = torch.tensor([50.0, 5.0])
    with torch.no_grad():
        outputs = task(batch["image"])
        first = task.loss_terms(outputs, {**batch, "keypoints": [kpts, *batch["keypoints"][1:]]})
        second = task.loss_terms(outputs, {**batch, "keypoints": [moved, *batch["keypoints"][1:]]})
        moved[0, 3, 2] = 2.0  # labelled now: it counts
        third = task.loss_terms(outputs, {**batch, "keypoints": [moved, *batch["keypoints"][1:]]})
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert not torch.equal(first["keypoint_heatmap"], third["keypoint_heatmap"])


def test_bad_hyperparameters_fail_before_training():
    with pytest.raises(ValueError, match="Unknown head 'hrnet'"):
        KeypointEstimationTask(head="hrnet")
    with pytest.raises(ValueError, match="Unknown refine 'dark'"):
        KeypointEstimationTask(refine="dark")
    with pytest.raises(ValueError, match="num_keypoints must be >= 1"):
        KeypointEstimationTask(num_keypoints=0)
    with pytest.raises(ValueError, match="need 13 positive OKS sigmas"):
        KeypointEstimationTask(num_keypoints=13, oks_sigmas=[0.05] * 17)
    with pytest.raises(ValueError, match="pck_threshold"):
        KeypointEstimationTask(pck_threshold=0.0)


def test_num_keypoints_mismatch_with_data_fails_before_training(tmp_path):
    task = KeypointEstimationTask(backbone="resnet10t", num_keypoints=17)
    dm = SyntheticKeypointsDataModule(num_train=4, num_val=4, batch_size=2)
    trainer = Trainer(fast_dev_run=True, default_root_dir=tmp_path, logger=False)
    with pytest.raises(ValueError, match=r"num_keypoints=13 .* num_keypoints=17"):
        trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 0


# ---------------------------------------------------------------------------------------------
# The configs, through the real CLI.

SMALL_RUN = [
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.fast_dev_run=true",
    "--model.init_args.backbone=test_resnet",
    "--model.init_args.pretrained=false",
    "--model.init_args.head_channels=16",
    "--data.init_args.batch_size=2",
    "--data.init_args.num_workers=0",
]


def write_tiny_coco_keypoints(root: Path, num_images: int = 3) -> None:
    """COCO person-keypoint files (17 keypoints) with a few PNG/JPEG images per split."""
    gen = torch.Generator().manual_seed(0)
    category = {"id": 1, "name": "person", "keypoints": COCO_NAMES, "skeleton": [[16, 14]]}
    image_id, ann_id = 0, 0
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / split).mkdir()
        images, annotations = [], []
        for i in range(num_images):
            image_id += 1
            width, height = 96, 72 + 8 * i
            name = f"{image_id:04d}.{'png' if i % 2 else 'jpg'}"
            pixels = (torch.rand(height, width, 3, generator=gen) * 255).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / split / name)
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            for x0 in (4.0, 50.0):
                ann_id += 1
                xy = torch.rand(17, 2, generator=gen) * torch.tensor([40.0, 60.0])
                vis = torch.randint(0, 3, (17, 1), generator=gen).float()
                kps = torch.cat([xy + torch.tensor([x0, 4.0]), vis], 1)
                kps[kps[:, 2] == 0] = 0.0
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [x0, 4.0, 40.0, 60.0],
                        "area": 1800.0,
                        "iscrowd": 0,
                        "num_keypoints": int((kps[:, 2] > 0).sum()),
                        "keypoints": kps.reshape(-1).tolist(),
                    }
                )
        data = {"images": images, "annotations": annotations, "categories": [category]}
        (root / "annotations" / f"{split}.json").write_text(json.dumps(data))


def _coco_args(root):
    return [
        f"--data.init_args.root={root}",
        "--data.init_args.train_ann=annotations/train.json",
        "--data.init_args.val_ann=annotations/val.json",
        "--data.init_args.train_images=train",
        "--data.init_args.val_images=val",
        "--data.init_args.image_size=64",
    ]


def test_coco_config_refuses_wrong_num_keypoints(run_cli, tmp_path, capsys):
    root = tmp_path / "coco"
    write_tiny_coco_keypoints(root)
    args = [f"--config={CONFIGS / 'coco.yaml'}", *SMALL_RUN, *_coco_args(root)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *args, "--model.init_args.num_keypoints=13")
    # A configuration error: one line naming the fix, exit status 2.
    assert exit_info.value.code == 2
    assert "set model.init_args.num_keypoints=17" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Learning.


@pytest.mark.slow
def test_a_few_dozen_steps_beat_the_untrained_model(tmp_path):
    seed_everything(0)
    dm = SyntheticKeypointsDataModule(num_train=40 * 16, num_val=32, batch_size=16)
    # The dense model's own learning: the lattice term trades dense accuracy for the
    # export's and slows this short run down (benchmarks/README.md measures both).
    task = KeypointEstimationTask(
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
    assert after["pck"] > before["pck"] + 0.15, (before, after)
