import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dense_lightning.data.base import collate_instances
from dense_lightning.data.synthetic import box_of
from dense_lightning.data.transforms import (
    IMAGENET_MEAN,
    crop,
    denormalize,
    flip_pairs_from_names,
    hflip,
    letterbox,
    normalize,
    pad,
    random_hflip,
    random_scale_crop,
    resize,
)


def make_sample(height: int = 48, width: int = 64) -> dict[str, torch.Tensor]:
    """One rectangle object: its mask (label 3), box, and two keypoints (left, right)."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(height, width, dtype=torch.int64)
    mask[10:30, 8:24] = 3
    return {
        "image": torch.rand(3, height, width, generator=gen),
        "mask": mask,
        "boxes": torch.tensor([[8.0, 10.0, 24.0, 30.0]]),
        "labels": torch.tensor([3]),
        "keypoints": torch.tensor([[[10.0, 12.0, 2.0], [20.0, 12.0, 1.0], [0.0, 0.0, 0.0]]]),
    }


def test_normalize_roundtrip_and_mean_maps_to_zero():
    image = torch.rand(3, 5, 7)
    assert torch.allclose(denormalize(normalize(image)), image, atol=1e-6)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 2, 2)
    assert torch.allclose(normalize(mean), torch.zeros(3, 2, 2), atol=1e-6)


def test_flip_pairs_from_names():
    names = ["nose", "left_eye", "right_eye", "left_knee", "head", "right_knee", "left_tail"]
    assert flip_pairs_from_names(names) == [(1, 2), (3, 5)]


def test_hflip_mirrors_everything_and_swaps_pairs():
    sample = make_sample()
    flipped = hflip(sample, flip_pairs=[(0, 1)])
    assert torch.equal(flipped["image"], sample["image"].flip(-1))
    assert torch.equal(flipped["boxes"], torch.tensor([[40.0, 10.0, 56.0, 30.0]]))
    # Index 0 (left) now holds the mirror of the old right point, and vice versa.
    expected = torch.tensor([[[44.0, 12.0, 1.0], [54.0, 12.0, 2.0], [0.0, 0.0, 0.0]]])
    assert torch.equal(flipped["keypoints"], expected)
    assert box_of(flipped["mask"].numpy() == 3) == flipped["boxes"][0].tolist()
    assert sample["boxes"][0, 0] == 8.0  # input untouched


def test_hflip_twice_restores():
    sample = make_sample()
    twice = hflip(hflip(sample, [(0, 1)]), [(0, 1)])
    for key in sample:
        assert torch.allclose(twice[key].float(), sample[key].float()), key


def test_resize_scales_coordinates_and_keeps_labels():
    out = resize(make_sample(48, 64), (24, 128))
    assert out["image"].shape == (3, 24, 128)
    assert out["mask"].dtype == torch.int64
    assert set(out["mask"].unique().tolist()) == {0, 3}
    assert torch.allclose(out["boxes"], torch.tensor([[16.0, 5.0, 48.0, 15.0]]))
    assert box_of(out["mask"].numpy() == 3) == out["boxes"][0].tolist()
    assert torch.equal(out["keypoints"][0, 2], torch.zeros(3))  # invisible stays (0, 0, 0)
    assert torch.allclose(out["keypoints"][0, 0], torch.tensor([20.0, 6.0, 2.0]))


@pytest.mark.parametrize("size", [(24, 32), (17, 45), (96, 100)])
def test_mask_resize_matches_pil_nearest(size):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, (48, 64))
    out = resize({"mask": torch.from_numpy(mask)}, size)["mask"].numpy()
    pil = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(size[::-1], Image.NEAREST))
    # Exact ties (a centre landing on a pixel edge) may round apart: allow one row or column.
    assert (out == pil).mean() > 0.95


def test_pad_fills_mask_with_ignore_and_image_with_zero():
    out = pad(make_sample(48, 64), (50, 70), ignore_index=255)
    assert out["image"].shape == (3, 50, 70)
    assert (out["mask"][48:] == 255).all() and (out["mask"][:, 64:] == 255).all()
    assert (out["image"][:, 48:] == 0).all()
    assert torch.equal(out["boxes"], make_sample()["boxes"])


def test_crop_clips_boxes_drops_empty_and_hides_keypoints():
    sample = make_sample()
    sample["boxes"] = torch.tensor([[8.0, 10.0, 24.0, 30.0], [50.0, 40.0, 60.0, 46.0]])
    sample["labels"] = torch.tensor([3, 1])
    sample["keypoints"] = torch.cat([sample["keypoints"], torch.full((1, 3, 3), 2.0) * 25])
    out = crop(sample, top=0, left=15, height=40, width=30)
    assert torch.equal(out["boxes"], torch.tensor([[0.0, 10.0, 9.0, 30.0]]))
    assert out["labels"].tolist() == [3]
    assert out["keypoints"].shape == (1, 3, 3)
    # (10, 12) falls left of the window -> v=0 and zeroed; (20, 12) shifts to (5, 12).
    assert out["keypoints"][0, 0].tolist() == [0.0, 0.0, 0.0]
    assert out["keypoints"][0, 1].tolist() == [5.0, 12.0, 1.0]
    assert out["image"].shape == (3, 40, 30) and out["mask"].shape == (40, 30)


def test_letterbox_returns_factors_that_map_back():
    sample = make_sample(48, 64)
    out, (sx, sy) = letterbox(sample, 32, ignore_index=255)
    assert out["image"].shape == (3, 32, 32)
    assert (sx, sy) == (0.5, 0.5)
    assert (out["mask"][24:] == 255).all() and (out["mask"][:24] != 255).all()
    back = out["boxes"] / torch.tensor([sx, sy, sx, sy])
    assert torch.allclose(back, sample["boxes"])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    low=st.floats(0.3, 1.0),
    span=st.floats(0.0, 1.5),
    height=st.integers(20, 70),
    width=st.integers(20, 70),
)
def test_random_scale_crop_and_flip_keep_box_and_mask_consistent(seed, low, span, height, width):
    gen = torch.Generator().manual_seed(seed)
    sample = make_sample(height, width)
    sample["mask"].zero_()
    x0, y0 = width // 4, height // 4
    x1, y1 = x0 + width // 2, y0 + height // 2
    sample["mask"][y0:y1, x0:x1] = 3
    sample["boxes"] = torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32)
    out, _ = random_scale_crop(sample, 32, (low, low + span), ignore_index=255, generator=gen)
    out = random_hflip(out, [(0, 1)], generator=gen)
    assert out["image"].shape == (3, 32, 32) and out["mask"].shape == (32, 32)
    assert len(out["boxes"]) == len(out["labels"]) == len(out["keypoints"])
    visible = out["keypoints"][..., 2] > 0
    assert (out["keypoints"][..., :2][visible] >= 0).all()
    assert (out["keypoints"][..., :2][visible] <= 32).all()
    object_pixels = out["mask"].numpy() == 3
    if len(out["boxes"]) and object_pixels.sum() > 4:
        # Nearest-neighbour masks and exact boxes agree to within a pixel.
        assert np.allclose(box_of(object_pixels), out["boxes"][0].numpy(), atol=1.0)


def test_random_hflip_is_seeded():
    sample = make_sample()
    results = [
        torch.equal(random_hflip(sample, generator=torch.Generator().manual_seed(s))["image"],
                    sample["image"])
        for s in range(20)
    ]  # fmt: skip
    assert any(results) and not all(results)
    assert random_hflip(sample, p=0.0)["image"] is sample["image"]


def test_collate_keeps_instances_as_lists():
    a = {
        "image": torch.zeros(3, 8, 8),
        "boxes": torch.zeros(2, 4),
        "labels": torch.zeros(2),
        "keypoints": torch.zeros(2, 5, 3),
        "image_id": torch.tensor(4),
    }
    b = {"image": torch.ones(3, 8, 8), "boxes": torch.zeros(0, 4), "labels": torch.zeros(0),
         "keypoints": torch.zeros(0, 5, 3), "image_id": torch.tensor(9)}  # fmt: skip
    batch = collate_instances([a, b])
    assert batch["image"].shape == (2, 3, 8, 8)
    assert batch["image_id"].tolist() == [4, 9]
    assert [len(x) for x in batch["boxes"]] == [2, 0]
    assert [len(x) for x in batch["labels"]] == [2, 0]
    assert [tuple(x.shape) for x in batch["keypoints"]] == [(2, 5, 3), (0, 5, 3)]


@pytest.mark.parametrize("size", [(48, 64), (17, 33)])
def test_letterbox_longer_side_equals_size(size):
    out, (sx, sy) = letterbox(make_sample(*size), 40)
    assert out["image"].shape == (3, 40, 40)
    assert max(round(size[0] * sy), round(size[1] * sx)) == 40
