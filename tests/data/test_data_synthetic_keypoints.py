import numpy as np
import pytest
import torch

from dense_lightning.data import SyntheticKeypointsDataModule, SyntheticKeypointsDataset
from dense_lightning.data.synthetic_keypoints import FLIP_PAIRS, KEYPOINT_NAMES, SKELETON
from dense_lightning.data.transforms import hflip

NAME = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


@pytest.fixture(scope="module")
def dataset() -> SyntheticKeypointsDataset:
    return SyntheticKeypointsDataset(48, image_size=64, seed=1)


def test_metadata_is_consistent():
    dm = SyntheticKeypointsDataModule()
    assert dm.num_keypoints == len(dm.keypoint_names) == 13
    assert dm.num_classes == 1 and dm.image_size == 64
    for left, right in dm.flip_pairs:
        assert dm.keypoint_names[left] == "left_" + dm.keypoint_names[right][len("right_") :]
    assert len(dm.flip_pairs) == 6  # every joint but the head has a mirror twin
    for a, b in dm.skeleton:
        assert 0 <= a < 13 and 0 <= b < 13 and a != b
    assert list(FLIP_PAIRS) == dm.flip_pairs and list(SKELETON) == dm.skeleton


def test_deterministic_per_index(dataset):
    again = SyntheticKeypointsDataset(48, image_size=64, seed=1)
    for i in (7, 3, 7):
        assert torch.equal(dataset[i]["keypoints"], again[i]["keypoints"])
        assert torch.equal(dataset[i]["image"], again[i]["image"])
    other = SyntheticKeypointsDataset(48, image_size=64, seed=2)
    assert not torch.equal(dataset[3]["image"], other[3]["image"])


def test_sample_shapes_and_dtypes(dataset):
    sample = dataset[0]
    n = len(sample["boxes"])
    assert n >= 1
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
    assert sample["boxes"].shape == (n, 4) and sample["boxes"].dtype == torch.float32
    assert sample["labels"].tolist() == [0] * n and sample["labels"].dtype == torch.int64
    assert sample["keypoints"].shape == (n, 13, 3)
    assert sample["keypoints"].dtype == torch.float32
    assert sample["image_id"].item() == 0


def test_keypoints_agree_with_the_drawn_figures(dataset):
    counts = {0: 0, 1: 0, 2: 0}
    for i in range(len(dataset)):
        sample = dataset[i]
        _, figures = dataset.render(i)
        assert len(figures) == len(sample["boxes"])
        for kps, box, figure in zip(sample["keypoints"], sample["boxes"], figures, strict=True):
            x0, y0, x1, y1 = box.tolist()
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            for x, y, v in kps.tolist():
                counts[int(v)] += 1
                if v == 0:
                    assert x == y == 0  # COCO convention
                    continue
                assert x0 <= x <= x1 and y0 <= y <= y1
                assert figure.mask[min(int(y), 63), min(int(x), 63)]  # on the figure
    # All three COCO visibilities occur, visible ones most often.
    assert counts[0] > 0 and counts[1] > 0 and counts[2] > max(counts[0], counts[1])


def test_left_limbs_are_on_the_image_left_and_stay_there_after_flip(dataset):
    pairs = [("left_shoulder", "right_shoulder"), ("left_hip", "right_hip")]
    checked = 0
    for i in range(len(dataset)):
        sample = dataset[i]
        flipped = hflip(sample, FLIP_PAIRS)
        for s in (sample, flipped):
            for kps in s["keypoints"]:
                for left, right in pairs:
                    lx, _, lv = kps[NAME[left]].tolist()
                    rx, _, rv = kps[NAME[right]].tolist()
                    if lv > 0 and rv > 0:
                        assert lx < rx
                        checked += 1
    assert checked > 50


def test_flip_swaps_named_keypoints(dataset):
    sample = dataset[5]
    flipped = hflip(sample, FLIP_PAIRS)
    left, right = NAME["left_wrist"], NAME["right_wrist"]
    kps, fk = sample["keypoints"], flipped["keypoints"]
    visible = kps[:, right, 2] > 0
    assert torch.allclose(fk[visible, left, 0], 64 - kps[visible, right, 0])
    assert torch.equal(fk[:, left, 2], kps[:, right, 2])
    assert torch.allclose(hflip(flipped, FLIP_PAIRS)["keypoints"], kps)


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
def test_datamodule_batches(stage):
    dm = SyntheticKeypointsDataModule(
        image_size=32, num_train=4, num_val=4, num_test=4, num_predict=4, batch_size=2
    )
    dm.setup(stage)
    loader = {"fit": dm.train_dataloader, "validate": dm.val_dataloader,
              "test": dm.test_dataloader, "predict": dm.predict_dataloader}[stage]()  # fmt: skip
    batch = next(iter(loader))
    assert set(batch) == {"image", "boxes", "labels", "keypoints", "image_id", "orig_size", "scale"}
    assert batch["image"].shape == (2, 3, 32, 32)
    assert all(k.shape[1:] == (13, 3) for k in batch["keypoints"])
    assert [len(b) for b in batch["boxes"]] == [len(k) for k in batch["keypoints"]]


def test_small_images_are_rejected():
    with pytest.raises(ValueError, match="image_size"):
        SyntheticKeypointsDataModule(image_size=16)


def test_figure_sizes_vary():
    heights = [
        float(np.ptp(f.keypoints[f.keypoints[:, 2] > 0, 1]))
        for i in range(10)
        for f in SyntheticKeypointsDataset(10, image_size=64).render(i)[1]
    ]
    assert np.std(heights) > 2.0
