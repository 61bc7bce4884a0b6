import pytest
import torch

from dense_lightning.data import (
    SyntheticImageClassificationDataModule,
    SyntheticImageClassificationDataset,
    SyntheticImageRegressionDataModule,
    SyntheticImageRegressionDataset,
)
from dense_lightning.data.shapes import SHAPES


def test_classification_batches_carry_one_label_per_image():
    data = SyntheticImageClassificationDataModule(
        num_classes=3, image_size=64, num_train=12, num_val=4, num_test=4, num_predict=2,
        batch_size=4,
    )  # fmt: skip
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.int64
    assert data.num_classes == 3 and data.class_names == list(SHAPES[:3])
    labels = torch.stack([data.dataset("train")[i]["label"] for i in range(12)])
    assert labels.min() >= 0 and labels.max() < 3
    assert len(labels.unique()) > 1


def test_samples_are_a_function_of_seed_split_and_index():
    a = SyntheticImageClassificationDataset(4, seed=3, split="val", image_size=64)
    b = SyntheticImageClassificationDataset(4, seed=3, split="val", image_size=64)
    torch.testing.assert_close(a[2]["image"], b[2]["image"], rtol=0, atol=0)
    other = SyntheticImageClassificationDataset(4, seed=3, split="test", image_size=64)
    assert not torch.equal(a[2]["image"], other[2]["image"])


def test_the_label_is_the_drawn_shape():
    data = SyntheticImageClassificationDataset(64, num_classes=4, image_size=64)
    kinds = {data.draw(i)[1] for i in range(64)}
    assert kinds == {0, 1, 2, 3}
    for i in range(8):
        _, kind, radius = data.draw(i)
        assert int(data[i]["label"]) == kind
        assert 0.06 <= radius <= 0.16


def test_regression_target_is_the_radius_in_percent_of_the_side():
    data = SyntheticImageRegressionDataset(16, image_size=40)
    for i in range(16):
        _, _, radius = data.draw(i)
        sample = data[i]
        assert sample["target"].dtype == torch.float32
        assert float(sample["target"]) == pytest.approx(100 * radius, rel=1e-6)
        assert 8.0 <= float(sample["target"]) <= 30.0
    # The same index at another resolution has the same target (percent of the side).
    big = SyntheticImageRegressionDataset(16, image_size=80)
    assert float(big[5]["target"]) == float(data[5]["target"])


def test_regression_module_says_the_target_distribution():
    data = SyntheticImageRegressionDataModule(
        image_size=32, num_train=400, batch_size=8, radius_min=0.1, radius_max=0.3
    )
    assert data.target_mean == pytest.approx(20.0)
    assert data.target_std == pytest.approx(20.0 / 12**0.5)
    targets = torch.stack([data.dataset("train")[i]["target"] for i in range(400)])
    assert float(targets.mean()) == pytest.approx(data.target_mean, abs=1.0)
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    assert set(batch) == {"image", "target"} and batch["target"].shape == (8,)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": len(SHAPES) + 1}, "num_classes"),
        ({"radius_min": 0.2, "radius_max": 0.1}, "radius_min <= radius_max"),
        ({"radius_max": 0.6}, "<= 0.5"),
        ({"image_size": 8}, "image_size"),
    ],
)
def test_bad_classification_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticImageClassificationDataModule(**kwargs)


def test_shapes_too_small_to_tell_apart_are_refused():
    with pytest.raises(ValueError, match="cannot be told apart"):
        SyntheticImageClassificationDataset(4, image_size=32, radius_range=(0.05, 0.1))
    with pytest.raises(ValueError, match=r"2\.9 px at image_size=48"):
        SyntheticImageClassificationDataModule(image_size=48)
