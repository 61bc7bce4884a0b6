import pytest
import torch

from dense_lightning.data import (
    COCODetectionDataModule,
    COCODetectionDataset,
    COCOKeypointsDataModule,
    COCOKeypointsDataset,
)
from dense_lightning.data.transforms import hflip

ANN = {"train_ann": "annotations/train.json", "val_ann": "annotations/val.json"}
IMAGES = {"train_images": "images", "val_images": "images"}
STAGE_LOADER = {"fit": "train_dataloader", "validate": "val_dataloader",
                "test": "test_dataloader", "predict": "predict_dataloader"}  # fmt: skip


def det_dm(root, **kwargs) -> COCODetectionDataModule:
    return COCODetectionDataModule(
        str(root), **{**ANN, **IMAGES, "image_size": 32, "batch_size": 3, **kwargs}
    )


def kp_dm(root, **kwargs) -> COCOKeypointsDataModule:
    return COCOKeypointsDataModule(
        str(root), **{**ANN, **IMAGES, "image_size": 32, "batch_size": 3, **kwargs}
    )


def det_dataset(root, **kwargs) -> COCODetectionDataset:
    return COCODetectionDataset(root, "annotations/val.json", "images", image_size=32, **kwargs)


def kp_dataset(root, **kwargs) -> COCOKeypointsDataset:
    return COCOKeypointsDataset(root, "annotations/val.json", "images", image_size=32, **kwargs)


# Detection ------------------------------------------------------------------------------------


def test_detection_metadata_before_setup(coco_det_root):
    dm = det_dm(coco_det_root)
    assert dm.num_classes == 3
    assert dm.category_ids == [1, 3, 7]
    assert dm.class_names == ["cat", "dog", "bird"]
    assert dm.datasets == {}


def test_detection_sample_boxes_scale_and_map_back(coco_det_root):
    dataset = det_dataset(coco_det_root)
    assert dataset.image_ids == [10, 11, 12]
    sample = dataset[0]  # image 10 is 40x30: scale 0.8
    assert sample["image"].shape == (3, 32, 32)
    assert sample["image_id"].item() == 10
    assert sample["orig_size"].tolist() == [30, 40]
    assert torch.allclose(sample["scale"], torch.tensor([0.8, 0.8]))
    assert sample["labels"].tolist() == [0, 2]  # categories 1 and 7
    original = torch.tensor([[4.0, 2.0, 14.0, 10.0], [20.0, 10.0, 35.0, 22.0]])
    assert torch.allclose(sample["boxes"], original * 0.8)
    back = sample["boxes"] / sample["scale"].repeat(2)
    assert torch.allclose(back, original, atol=1e-5)
    assert dataset.category_ids[2] == 7
    assert dataset.coco.imgs[10]["file_name"] == "a.png"


def test_detection_skips_crowd_and_keeps_empty_images(coco_det_root):
    dataset = det_dataset(coco_det_root)
    assert dataset[1]["labels"].tolist() == [1]  # the crowd box of image 11 is skipped
    empty = dataset[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


@pytest.mark.parametrize("stage", list(STAGE_LOADER))
def test_detection_batches_every_stage(coco_det_root, stage):
    dm = det_dm(coco_det_root)
    dm.setup(stage)
    batch = next(iter(getattr(dm, STAGE_LOADER[stage])()))
    assert set(batch) == {"image", "boxes", "labels", "image_id", "orig_size", "scale"}
    assert batch["image"].shape == (3, 3, 32, 32)
    assert [b.shape[1] for b in batch["boxes"]] == [4, 4, 4]
    assert all(b.dtype == torch.float32 for b in batch["boxes"])
    assert all(lb.dtype == torch.int64 for lb in batch["labels"])
    for boxes in batch["boxes"]:
        assert (boxes >= 0).all() and (boxes <= 32).all()
    if stage != "fit":
        assert batch["image_id"].tolist() == [10, 11, 12]


def test_training_augmentation_is_letterbox_or_its_mirror(coco_det_root):
    plain = det_dataset(coco_det_root)[0]
    augmented = det_dataset(coco_det_root, augment=True, scale_range=(1.0, 1.0))
    torch.manual_seed(0)
    kinds = set()
    for _ in range(12):
        sample = augmented[0]
        if torch.allclose(sample["boxes"], plain["boxes"]):
            kinds.add("same")
            assert torch.allclose(sample["image"], plain["image"])
        else:
            mirrored = hflip(plain)
            assert torch.allclose(sample["boxes"], mirrored["boxes"])
            assert torch.allclose(sample["image"], mirrored["image"])
            kinds.add("flipped")
    assert kinds == {"same", "flipped"}


def test_val_categories_follow_the_training_file(make_coco_root, coco_det_json):
    train = coco_det_json
    val = {**coco_det_json, "categories": [{"id": 7, "name": "bird"}]}
    val["annotations"] = [a for a in coco_det_json["annotations"] if a["category_id"] == 7]
    dm = det_dm(make_coco_root(val, train=train))
    dm.setup("validate")
    assert dm.datasets["val"][0]["labels"].tolist() == [2]  # label of category 7 in train


# Keypoints ------------------------------------------------------------------------------------


def test_keypoint_metadata_from_the_category(coco_kp_root, coco_kp_json):
    dm = kp_dm(coco_kp_root)
    names = coco_kp_json["categories"][0]["keypoints"]
    assert dm.keypoint_names == names and dm.num_keypoints == 17 and dm.num_classes == 1
    assert dm.flip_pairs == [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
    assert (15, 13) in dm.skeleton and (0, 1) in dm.skeleton  # 1-based [16, 14], [1, 2]
    explicit = kp_dm(coco_kp_root, flip_pairs=[(1, 2)])
    assert explicit.flip_pairs == [(1, 2)]


def test_keypoint_sample(coco_kp_root):
    dataset = kp_dataset(coco_kp_root)
    sample = dataset[0]  # image 10 (40x30), scale 0.8; one person
    assert set(sample) == {"image", "boxes", "labels", "keypoints", "image_id", "orig_size",
                           "scale"}  # fmt: skip
    kps = sample["keypoints"]
    assert kps.shape == (1, 17, 3) and kps.dtype == torch.float32
    assert torch.allclose(kps[0, 0], torch.tensor([8.0, 4.0, 2.0]))  # nose (10, 5) * 0.8
    assert torch.allclose(kps[0, 6], torch.tensor([4.8, 8.0, 1.0]))  # right_shoulder, v=1
    assert kps[0, 1].tolist() == [0.0, 0.0, 0.0]
    assert sample["labels"].tolist() == [0]
    assert torch.allclose(sample["boxes"], torch.tensor([[4.0, 3.0, 18.0, 23.0]]) * 0.8)
    # Image 11: the crowd person is skipped; image 12 only has a non-keypoint category.
    assert dataset[1]["keypoints"].shape == (1, 17, 3)
    assert dataset[1]["keypoints"][0, 13].tolist() == [0.0, 0.0, 0.0]  # v=0 left_knee
    assert dataset[2]["keypoints"].shape == (0, 17, 3)


def test_keypoint_flip_swaps_left_and_right(coco_kp_root):
    dataset = kp_dataset(coco_kp_root)
    plain = dataset[0]
    flipped = hflip(plain, dataset.flip_pairs)
    left, right = 5, 6  # shoulders
    assert torch.allclose(flipped["keypoints"][0, right, :2],
                          torch.tensor([32 - plain["keypoints"][0, left, 0],
                                        plain["keypoints"][0, left, 1]]))  # fmt: skip
    assert flipped["keypoints"][0, right, 2] == plain["keypoints"][0, left, 2]
    augmented = kp_dataset(coco_kp_root, augment=True, scale_range=(1.0, 1.0))
    torch.manual_seed(1)
    seen = set()
    for _ in range(12):
        kps = augmented[0]["keypoints"]
        same = torch.allclose(kps, plain["keypoints"])
        assert same or torch.allclose(kps, flipped["keypoints"])
        seen.add(same)
    assert seen == {True, False}


@pytest.mark.parametrize("stage", list(STAGE_LOADER))
def test_keypoint_batches_every_stage(coco_kp_root, stage):
    dm = kp_dm(coco_kp_root)
    dm.setup(stage)
    batch = next(iter(getattr(dm, STAGE_LOADER[stage])()))
    assert all(k.shape[1:] == (17, 3) for k in batch["keypoints"])
    assert len(batch["keypoints"]) == len(batch["boxes"]) == 3
    for kps in batch["keypoints"]:
        visible = kps[..., 2] > 0
        assert (kps[..., :2][visible] >= 0).all() and (kps[..., :2][visible] <= 32).all()
        assert (kps[~visible] == 0).all()


def test_several_keypoint_categories_need_category_id(make_coco_root, coco_kp_json):
    coco_kp_json["categories"].append(
        {"id": 5, "name": "robot", "keypoints": ["a", "b"], "skeleton": [[1, 2]]}
    )
    root = make_coco_root(coco_kp_json)
    with pytest.raises(ValueError, match="category_id"):
        _ = kp_dm(root).keypoint_names
    assert kp_dm(root, category_id=1).num_keypoints == 17


# Bad data -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bbox", "problem"), [([1, 1, -3, 4], "w=-3"), ([1, 1, 4, 0], "h=0"), ([1, 1], "bbox")]
)
def test_bad_box_names_the_annotation(make_coco_root, coco_det_json, bbox, problem):
    coco_det_json["annotations"][1]["bbox"] = bbox
    root = make_coco_root(coco_det_json)
    with pytest.raises(ValueError, match=rf"val\.json: annotation 2: .*{problem}"):
        det_dm(root).setup("validate")


def test_box_outside_the_image_names_the_annotation(make_coco_root, coco_det_json):
    coco_det_json["annotations"][0]["bbox"] = [50, 2, 5, 5]  # image 10 is 40 wide
    with pytest.raises(ValueError, match=r"annotation 1: .*outside"):
        det_dm(make_coco_root(coco_det_json)).setup("validate")


def test_unknown_category_names_the_annotation(make_coco_root, coco_det_json):
    coco_det_json["annotations"][2]["category_id"] = 99
    with pytest.raises(ValueError, match="annotation 3: unknown category id 99"):
        det_dm(make_coco_root(coco_det_json)).setup("validate")


def test_unknown_image_names_the_annotation(make_coco_root, coco_det_json):
    coco_det_json["annotations"][2]["image_id"] = 404
    with pytest.raises(ValueError, match="annotation 3: unknown image id 404"):
        det_dm(make_coco_root(coco_det_json)).setup("validate")


def test_wrong_keypoint_count_names_the_annotation(make_coco_root, coco_kp_json):
    coco_kp_json["annotations"][1]["keypoints"] = [1, 2, 2] * 16
    with pytest.raises(ValueError, match=r"val\.json: annotation 2: keypoints has 48 values"):
        kp_dm(make_coco_root(coco_kp_json)).setup("validate")


def test_bad_visibility_names_the_annotation(make_coco_root, coco_kp_json):
    coco_kp_json["annotations"][0]["keypoints"][2] = 3
    with pytest.raises(ValueError, match="annotation 1: keypoint visibility"):
        kp_dm(make_coco_root(coco_kp_json)).setup("validate")


def test_missing_image_file_is_named_without_the_upfront_check(coco_det_root):
    (coco_det_root / "images" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.png: image file of image 11"):
        det_dm(coco_det_root, verify=False).setup("validate")


def test_missing_annotation_file_and_root_are_named(coco_det_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json \(val annotation file\)"):
        det_dm(coco_det_root, val_ann="annotations/nope.json")
    with pytest.raises(FileNotFoundError, match=r"dataset root not found: .*missing_root"):
        det_dm(tmp_path / "missing_root")


def test_invalid_json_and_missing_fields_are_named(coco_det_root, make_coco_root, coco_det_json):
    (coco_det_root / "annotations" / "val.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"val\.json: not valid JSON"):
        det_dm(coco_det_root).setup("validate")
    del coco_det_json["annotations"][0]["category_id"]
    with pytest.raises(ValueError, match=r"annotation id 1 lacks \['category_id'\]"):
        det_dm(make_coco_root(coco_det_json)).setup("validate")


def test_unreadable_and_resized_images_are_named(coco_det_root):
    from PIL import Image

    Image.new("RGB", (10, 10)).save(coco_det_root / "images" / "b.png")
    (coco_det_root / "images" / "c.png").write_bytes(b"garbage")
    dataset = det_dataset(coco_det_root)
    with pytest.raises(ValueError, match=r"b\.png: image 11 is 10x10"):
        dataset[1]
    with pytest.raises(ValueError, match=r"c\.png: cannot read image"):
        dataset[2]


def test_mismatched_keypoint_names_between_splits(make_coco_root, coco_kp_json):
    import copy

    val = copy.deepcopy(coco_kp_json)
    val["categories"][0]["keypoints"] = [f"k{i}" for i in range(17)]
    with pytest.raises(ValueError, match="differ from"):
        kp_dm(make_coco_root(val, train=coco_kp_json)).setup("validate")
