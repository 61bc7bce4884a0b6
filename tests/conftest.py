"""Shared fixtures for the Lightning layer: tiny data, tiny tasks, a tiny VOC folder, the CLI.

Helpers are fixtures (factories) because the suite may run with ``--import-mode=importlib``,
where test modules cannot import each other.
"""

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dense_lightning.data import SyntheticSegmentationDataModule
from dense_lightning.tasks import SemanticSegmentationTask

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    # No network here; a config with a WandbLogger must still run (and leave the real env alone).
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


_LIGHTNING_LEVELS = {
    name: logging.getLogger(name).level
    for name in ("lightning", "lightning.pytorch", "lightning.fabric")
}


@pytest.fixture(autouse=True)
def _lightning_messages_reach_caplog(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Lightning stops its logger propagating when it is first imported while the root logger has
    # no handler, which depends on test order; caplog listens on the root logger. Benchmarks run
    # in-process quieten Lightning's loggers: give each test the levels the session started with.
    # The levels are those of the session's start: a module-scoped fixture may have quietened
    # them before this function-scoped one runs.
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    for name, level in _LIGHTNING_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    yield
    for name, level in _LIGHTNING_LEVELS.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def quickstart() -> Path:
    """The quickstart config."""
    return REPO / "configs" / "segmentation" / "quickstart.yaml"


@pytest.fixture
def seg_data() -> Callable[..., SyntheticSegmentationDataModule]:
    def make(**overrides) -> SyntheticSegmentationDataModule:
        kwargs = dict(
            num_classes=4, image_size=32, num_train=8, num_val=4, num_test=4, num_predict=4,
            batch_size=4, num_workers=0, seed=0,
        )  # fmt: skip
        return SyntheticSegmentationDataModule(**{**kwargs, **overrides})

    return make


@pytest.fixture
def seg_task() -> Callable[..., SemanticSegmentationTask]:
    def make(**overrides) -> SemanticSegmentationTask:
        torch.manual_seed(0)
        kwargs = dict(backbone="test_resnet", num_classes=4, output_stride=8, head_channels=16)
        return SemanticSegmentationTask(**{**kwargs, **overrides})

    return make


def _write_voc(root: Path, num_images: int, size: int, num_classes: int) -> Path:
    rng = np.random.default_rng(0)
    ids = [f"img{i:02d}" for i in range(num_images)]
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(ids):
        height, width = size, size + 8 * (i % 2)  # mixed aspect ratios, like the real data
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg")
        mask = rng.integers(0, num_classes, (height, width), dtype=np.uint8)
        mask[0, :] = 255  # an ignored border, as VOC has around objects
        Image.fromarray(mask).save(root / "SegmentationClass" / f"{name}.png")
    half = num_images // 2
    split_dir = root / "ImageSets" / "Segmentation"
    (split_dir / "train.txt").write_text("\n".join(ids[:half]) + "\n")
    (split_dir / "val.txt").write_text("\n".join(ids[half:]) + "\n")
    return root


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """A VOC-style folder with 3 classes, 4 train and 4 val images of about 40 px."""
    return _write_voc(tmp_path / "VOC", num_images=8, size=40, num_classes=3)


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., object]]:
    """Run the real CLI in-process inside ``tmp_path``; returns the LightningCLI object.

    The configs use ``strategy: ddp``, which on one CPU starts a one-process group and sets
    MASTER_ADDR/PORT; both are undone afterwards so later tests start clean.
    """
    from dense_lightning.cli import create_cli

    monkeypatch.chdir(tmp_path)
    environ = dict(os.environ)

    def run(*args: str) -> object:
        return create_cli([str(a) for a in args])

    yield run
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(environ)
