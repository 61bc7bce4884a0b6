"""Every YAML in configs/ (sweeps aside) runs through the real CLI: fit, validate, test, predict."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from dense_lightning.equivalent import is_dense

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_CONFIGS = sorted(
    str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml") if p.parent.name != "sweeps"
)

TINY = [
    "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false", "--data.init_args.num_workers=0",
    "--model.init_args.backbone=test_resnet", "--model.init_args.pretrained=false",
]  # fmt: skip
# Dense-prediction heads only: the image-level tasks use the classifier's own layer.
HEAD = ["--model.init_args.head_channels=16"]
SYNTHETIC = [
    "--data.init_args.batch_size=2", "--data.init_args.num_train=4", "--data.init_args.num_val=4",
    "--data.init_args.num_test=2", "--data.init_args.num_predict=2",
    "--data.init_args.image_size=64",
]  # fmt: skip
COCO = [
    "--data.init_args.root={root}", "--data.init_args.train_ann=annotations/train.json",
    "--data.init_args.val_ann=annotations/val.json", "--data.init_args.train_images=train",
    "--data.init_args.val_images=val", "--data.init_args.image_size=64",
    "--data.init_args.batch_size=2",
]  # fmt: skip
VOC = [
    "--data.init_args.root={root}", "--data.init_args.image_size=32",
    "--data.init_args.num_classes=3", "--data.init_args.batch_size=2",
    "--model.init_args.num_classes=3",
]  # fmt: skip

FOLDER = ["--data.init_args.root={root}", "--data.init_args.image_size=32",
          "--data.init_args.batch_size=2"]  # fmt: skip

# Each config: the data it needs (None: built-in synthetic data) and its small overrides.
CASES = {
    "segmentation/quickstart.yaml": (None, [*HEAD, *SYNTHETIC]),
    "segmentation/voc.yaml": ("voc", [*HEAD, *VOC]),
    "detection/quickstart.yaml": (None, [*HEAD, *SYNTHETIC]),
    "detection/coco.yaml": ("coco", [*HEAD, *COCO, "--model.init_args.num_classes=1"]),
    "keypoints/quickstart.yaml": (None, [*HEAD, *SYNTHETIC]),
    "keypoints/coco.yaml": ("coco", [*HEAD, *COCO]),
    "classification/quickstart.yaml": (None, SYNTHETIC),
    "classification/folder.yaml": ("folder", [*FOLDER, "--model.init_args.num_classes=3"]),
    "regression/quickstart.yaml": (None, SYNTHETIC),
    "regression/csv.yaml": ("csv", FOLDER),
}

COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip


def write_tiny_coco(root: Path, num_images: int = 2) -> Path:
    """COCO person annotations (boxes and 17 keypoints), usable for detection and keypoints."""
    gen = torch.Generator().manual_seed(0)
    category = {"id": 1, "name": "person", "keypoints": COCO_KEYPOINTS, "skeleton": [[16, 14]]}
    (root / "annotations").mkdir(parents=True)
    image_id = ann_id = 0
    for split in ("train", "val"):
        (root / split).mkdir()
        images, annotations = [], []
        for i in range(num_images):
            image_id += 1
            name = f"{image_id:04d}.{'png' if i % 2 else 'jpg'}"
            pixels = (torch.rand(72, 96, 3, generator=gen) * 255).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / split / name)
            images.append({"id": image_id, "file_name": name, "width": 96, "height": 72})
            for x0 in (4.0, 50.0):
                ann_id += 1
                xy = torch.rand(17, 2, generator=gen) * torch.tensor([40.0, 60.0])
                keypoints = torch.cat([xy + torch.tensor([x0, 4.0]), torch.full((17, 1), 2.0)], 1)
                annotations.append(
                    {
                        "id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                        "bbox": [x0, 4.0, 40.0, 60.0], "area": 2400.0, "num_keypoints": 17,
                        "keypoints": keypoints.reshape(-1).tolist(),
                    }
                )  # fmt: skip
        data = {"images": images, "annotations": annotations, "categories": [category]}
        (root / "annotations" / f"{split}.json").write_text(json.dumps(data))
    return root


def test_every_config_has_a_case():
    # A new YAML file must get an entry here, so that it runs in CI too.
    assert ALL_CONFIGS == sorted(CASES)


def write_tiny_image_folder(root: Path, classes=("cat", "dog", "owl")) -> Path:
    """train/ and val/ with one sub-folder per class, two small images each."""
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for name in classes:
            for i in range(2):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                pixels = (torch.rand(30, 40, 3, generator=gen) * 255).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(root / split / name / f"{i}.png")
    return root


def write_tiny_csv(root: Path) -> Path:
    """train.csv and val.csv (file,value) over four small images."""
    gen = torch.Generator().manual_seed(0)
    (root / "images").mkdir(parents=True)
    for i in range(8):
        pixels = (torch.rand(36, 28, 3, generator=gen) * 255).to(torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / "images" / f"{i}.jpg")
    for split, ids in (("train", range(4)), ("val", range(4, 8))):
        rows = ["file,value", *(f"images/{i}.jpg,{20 + 5 * i}" for i in ids)]
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_runs_through_the_cli(name, run_cli, voc_root, tmp_path):
    data, overrides = CASES[name]
    writers = {"coco": write_tiny_coco, "folder": write_tiny_image_folder, "csv": write_tiny_csv}
    root = {"voc": voc_root}
    if data in writers:
        root[data] = writers[data](tmp_path / data)
    base = [
        f"--config={CONFIGS / name}",
        *TINY,
        *(a.format(root=root.get(data)) for a in overrides),
    ]
    fit = run_cli("fit", *base)
    assert is_dense(fit.model.model)
    monitor = fit.model.monitor
    exports = tmp_path / "exports"
    report = json.loads((exports / "equivalence.json").read_text())
    assert report["equivalence"]["equivalent"] and not report["approximate"]
    assert {f"dense_{monitor}", f"exported_{monitor}"} <= set(report["metrics"])

    checkpoint = f"--ckpt_path={exports / 'model_original.ckpt'}"
    validate = run_cli("validate", *base, checkpoint)
    assert monitor in validate.trainer.callback_metrics
    test = run_cli("test", *base, checkpoint)
    assert monitor.replace("val_", "test_", 1) in test.trainer.callback_metrics
    predict = run_cli("predict", *base, checkpoint)
    assert predict.trainer.predict_loop.predictions
