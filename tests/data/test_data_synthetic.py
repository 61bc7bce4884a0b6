import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dense_lightning.data import (
    SyntheticDetectionDataModule,
    SyntheticDetectionDataset,
    SyntheticSegmentationDataModule,
    SyntheticSegmentationDataset,
    denormalize,
)
from dense_lightning.data.shapes import SHAPES, shape_mask
from dense_lightning.data.synthetic import box_of

# Fraction of its bounding square that each shape fills (analytic, for a large radius).
FILL = {
    "disc": np.pi / 4,
    "square": 1.0,
    "triangle": 0.5,
    "ring": np.pi / 4 * 0.75,
    "cross": 5 / 9,
    "diamond": 0.5,
}


def test_same_seed_same_sample_in_any_order():
    a = SyntheticSegmentationDataset(8, seed=3, split="val")
    b = SyntheticSegmentationDataset(8, seed=3, split="val")
    for i in (5, 0, 5, 7):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["image"], sb["image"]) and torch.equal(sa["mask"], sb["mask"])


def test_seed_split_and_index_change_the_sample():
    base = SyntheticSegmentationDataset(4, seed=0, split="train")[1]["image"]
    for other in (
        SyntheticSegmentationDataset(4, seed=1, split="train")[1]["image"],
        SyntheticSegmentationDataset(4, seed=0, split="val")[1]["image"],
        SyntheticSegmentationDataset(4, seed=0, split="train")[2]["image"],
    ):
        assert not torch.equal(base, other)


def test_samples_do_not_depend_on_workers():
    dataset = SyntheticDetectionDataset(6, seed=5)
    from dense_lightning.data import collate_instances

    serial = list(DataLoader(dataset, batch_size=2, collate_fn=collate_instances))
    parallel = list(DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_instances))
    for s, p in zip(serial, parallel, strict=True):
        assert torch.equal(s["image"], p["image"])
        assert all(torch.equal(a, b) for a, b in zip(s["boxes"], p["boxes"], strict=True))


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
def test_segmentation_datamodule_batches(stage):
    dm = SyntheticSegmentationDataModule(
        num_classes=5, image_size=48, num_train=10, num_val=6, num_test=4, num_predict=3,
        batch_size=4,
    )  # fmt: skip
    dm.setup(stage)
    loaders = {
        "fit": [dm.train_dataloader(), dm.val_dataloader()],
        "validate": [dm.val_dataloader()],
        "test": [dm.test_dataloader()],
        "predict": [dm.predict_dataloader()],
    }[stage]
    expected = {"fit": "train", "validate": "val", "test": "test", "predict": "predict"}[stage]
    assert expected in dm.datasets
    for loader in loaders:
        batch = next(iter(loader))
        assert set(batch) == {"image", "mask"}
        assert batch["image"].dtype == torch.float32 and batch["mask"].dtype == torch.int64
        assert batch["image"].shape[1:] == (3, 48, 48) and batch["mask"].shape[1:] == (48, 48)
        pixels = denormalize(batch["image"])
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        assert batch["mask"].min() >= 0 and batch["mask"].max() < 5
    assert dm.num_classes == 5 and dm.ignore_index == 255 and dm.image_size == 48
    assert dm.hparams["batch_size"] == 4


def test_split_sizes_and_every_class_appears():
    dm = SyntheticSegmentationDataModule(num_train=7, num_val=5, num_test=3, num_predict=2)
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {
        "train": 7, "val": 5, "test": 3, "predict": 2
    }  # fmt: skip
    dataset = SyntheticSegmentationDataset(40, num_classes=7, image_size=64)
    seen = set()
    for i in range(len(dataset)):
        seen |= set(dataset[i]["mask"].unique().tolist())
    assert seen == set(range(7))


def test_mask_classes_match_the_drawn_shape_types():
    dataset = SyntheticSegmentationDataset(30, num_classes=7, image_size=96)
    ratios: dict[str, list[float]] = {name: [] for name in SHAPES}
    for i in range(len(dataset)):
        mask = dataset[i]["mask"].numpy()
        _, shapes = dataset.render(i)
        for shape in shapes:
            # The exact mask of each drawn shape carries its class, and nothing else does.
            assert (mask[shape.mask] == shape.kind + 1).all()
            x0, y0, x1, y1 = box_of(shape.mask)
            side = max(x1 - x0, y1 - y0)
            if SHAPES[shape.kind] == "ring":
                cy, cx = int((y0 + y1) / 2), int((x0 + x1) / 2)
                assert mask[cy, cx] == 0  # the hole shows the background
            ratios[SHAPES[shape.kind]].append(shape.mask.sum() / side**2)
        assert (mask > 0).sum() == sum(s.mask.sum() for s in dataset.render(i)[1])
    for name, values in ratios.items():
        assert values, name
        # Square's bounding square is 0.8 of its circumradius square: fill is still ~1.
        assert abs(np.mean(values) - FILL[name]) < 0.12, (name, np.mean(values))


def test_shape_mask_rejects_unknown_shape():
    with pytest.raises(ValueError, match="hexagon"):
        shape_mask("hexagon", 10, 10, 5, 32)


def test_detection_boxes_enclose_exactly_their_shape():
    seg = SyntheticSegmentationDataset(20, num_classes=4, image_size=64, seed=2)
    det = SyntheticDetectionDataset(20, num_classes=3, image_size=64, seed=2)
    for i in range(20):
        s, d = seg[i], det[i]
        assert torch.equal(s["image"], d["image"])  # same scene
        mask = s["mask"].numpy()
        assert d["boxes"].dtype == torch.float32 and d["labels"].dtype == torch.int64
        assert d["boxes"].shape == (len(d["labels"]), 4) and len(d["labels"]) >= 1
        assert d["labels"].min() >= 0 and d["labels"].max() < 3
        covered = np.zeros_like(mask, dtype=bool)
        for box, label in zip(d["boxes"].tolist(), d["labels"].tolist(), strict=True):
            x0, y0, x1, y1 = (int(v) for v in box)
            inside = np.zeros_like(covered)
            inside[y0:y1, x0:x1] = mask[y0:y1, x0:x1] == label + 1
            assert box_of(inside) == box  # tight
            covered |= inside
        assert (covered == (mask > 0)).all()  # every shape pixel belongs to some box
        assert d["image_id"].item() == i
        assert d["orig_size"].tolist() == [64, 64] and d["scale"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
def test_detection_datamodule_batches(stage):
    dm = SyntheticDetectionDataModule(num_train=5, num_val=5, num_test=5, num_predict=5,
                                      batch_size=3, image_size=32)  # fmt: skip
    dm.setup(stage)
    loader = {"fit": dm.train_dataloader, "validate": dm.val_dataloader,
              "test": dm.test_dataloader, "predict": dm.predict_dataloader}[stage]()  # fmt: skip
    batch = next(iter(loader))
    assert set(batch) == {"image", "boxes", "labels", "image_id", "orig_size", "scale"}
    assert batch["image"].shape == (3, 3, 32, 32)
    assert isinstance(batch["boxes"], list) and len(batch["boxes"]) == 3
    assert batch["image_id"].dtype == torch.int64 and batch["image_id"].shape == (3,)
    for boxes in batch["boxes"]:
        assert (boxes[:, :2] < boxes[:, 2:]).all() and boxes.min() >= 0 and boxes.max() <= 32
    assert dm.num_classes == 3 and dm.class_names == ["disc", "square", "triangle"]


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (SyntheticSegmentationDataModule, {"num_classes": 1}, "num_classes"),
        (SyntheticSegmentationDataModule, {"num_classes": 8}, "num_classes"),
        (SyntheticDetectionDataModule, {"num_classes": 7}, "num_classes"),
        (SyntheticDetectionDataModule, {"image_size": 8}, "image_size"),
        (SyntheticSegmentationDataModule, {"batch_size": 0}, "batch_size"),
        (SyntheticSegmentationDataModule, {"num_val": -1}, "num_val"),
    ],
)
def test_bad_arguments_are_named(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_unknown_stage_is_rejected():
    with pytest.raises(ValueError, match="stage"):
        SyntheticSegmentationDataModule().setup("tune")
