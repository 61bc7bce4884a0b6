"""Checks the command runs before any folder, logger or run exists, each naming the fix.

They run on the parsed config (and the checkpoint file), before the model is built: a
missing or foreign checkpoint, a resume at another output stride, a task whose classes
disagree with its data, a missing backbone weights file. The data module itself is built
first and checks its own files (see ``DenseLightningCLI.instantiate_classes``), so a wrong
dataset root is reported before pretrained weights are fetched.
"""

from __future__ import annotations

import importlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from dense_lightning.errors import ConfigurationError
from dense_lightning.models import DENSE_STATE_KEY

__all__ = [
    "check_backbone_file",
    "check_data_matches_task",
    "check_resume_stride",
    "read_checkpoint",
]

# What torch.load raises on a file that is not a checkpoint (text, truncated, foreign pickle).
_LOAD_ERRORS = (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, KeyError)
_LOAD_ERRORS += (ValueError, AttributeError, ImportError, IndexError, TypeError)


def read_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint at ``path``, memory-mapped (its tensors are not read).

    Raises:
        ConfigurationError: the file does not exist, ``torch.load`` cannot read it, or it
            is not a Lightning checkpoint (no ``state_dict``: e.g. a file of backbone weights).
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigurationError(
            f"--ckpt_path: no such file: {path}. Give a checkpoint that fit wrote "
            "(<run>/checkpoints/last.ckpt), or `last` for the latest run's last checkpoint."
        )
    try:
        try:
            checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as mmap_error:  # files in torch's legacy format cannot be mapped
            if "mmap" not in str(mmap_error):
                raise
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as error:
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        raise ConfigurationError(
            f"--ckpt_path: {path} is not a checkpoint torch.load can read "
            f"({type(error).__name__}: {reason})."
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigurationError(
            f"--ckpt_path: {path} is not a Lightning checkpoint (it has no 'state_dict'). "
            "Backbone weights under timm names go in --model.init_args.checkpoint_path."
        )
    return checkpoint


def check_resume_stride(checkpoint: dict[str, Any], model: Any) -> None:
    """Refuse to resume ``fit`` at another output stride than the checkpoint's.

    Args:
        checkpoint: the checkpoint ``fit`` resumes.
        model: the parsed ``model`` config (``class_path`` and ``init_args``).

    Raises:
        ConfigurationError: the task's ``output_stride`` differs from the saved one.
    """
    states = checkpoint.get(DENSE_STATE_KEY)
    init_args = _init_args(model)
    if not isinstance(states, dict) or "model" not in states or "output_stride" not in init_args:
        return  # not one of our tasks, or a checkpoint that records no structure
    saved = states["model"]
    saved_stride = None if saved is None else int(saved["output_stride"])
    wanted = init_args["output_stride"]
    if wanted != saved_stride:
        raise ConfigurationError(
            f"The checkpoint was trained at output_stride={saved_stride} but fit resumes at "
            f"output_stride={wanted}; resuming must keep the stride. Resume with "
            f"--model.init_args.output_stride {'null' if saved_stride is None else saved_stride}"
            ", or start a new fit from its weights (they are the same network at every "
            "stride: dense_lightning.models.make_dense(Task.load_from_checkpoint(path).model, "
            "stride) converts them)."
        )


def check_data_matches_task(model: Any, datamodule: Any) -> None:
    """Refuse a task whose ``data_checks`` values (``num_classes``...) differ from the data's.

    The tasks check this in ``setup`` too; here it runs before a logger starts a run.

    Raises:
        ConfigurationError: a value differs; the message says which to set.
    """
    names = getattr(_model_class(model), "data_checks", ())
    init_args = _init_args(model)
    for name in names:
        if name not in init_args or not hasattr(datamodule, name):
            continue
        ours, theirs = init_args[name], getattr(datamodule, name)
        if theirs != ours:
            raise ConfigurationError(
                f"The data has {name}={theirs} but the task was built with {name}={ours}; "
                f"set model.init_args.{name}={theirs}."
            )


def check_backbone_file(model: Any) -> None:
    """Fail on a missing ``model.init_args.checkpoint_path`` before anything is built."""
    path = _init_args(model).get("checkpoint_path")
    if path is not None and not Path(path).is_file():
        raise ConfigurationError(
            f"model.init_args.checkpoint_path: no such file: {path}. Give a file of backbone "
            "weights under timm names (e.g. <run>/exports/backbone_<name>.pth), or remove it."
        )


def _init_args(model: Any) -> Any:
    """The ``init_args`` namespace of a parsed class config (``{}`` when it has none)."""
    init_args = model.get("init_args") if model is not None and hasattr(model, "get") else None
    return init_args if init_args is not None and hasattr(init_args, "get") else {}


def _model_class(model: Any) -> type | None:
    class_path = model.get("class_path") if model is not None and hasattr(model, "get") else None
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, name = class_path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
