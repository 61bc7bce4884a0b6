"""What ``dense-lightning --help`` says: the tool, its subcommands, tasks, data modules, configs."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import LightningDataModule, LightningModule

import dense_lightning.data
import dense_lightning.tasks
from dense_lightning.cli.messages import PROG

__all__ = ["CONFIGS", "DESCRIPTION", "SUBCOMMANDS", "HelpFormatter", "epilog"]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DESCRIPTION = (
    "Train any timm CNN densely (its strided layers made dilated, exactly equivalent to the "
    "original network) with PyTorch Lightning, then export the original fast network with "
    "the trained weights. Run a subcommand with --help for all its options."
)
# One whole sentence per subcommand (Lightning's own are the first line of the Trainer
# method's docstring, which stops mid-sentence).
SUBCOMMANDS = {
    "fit": (
        "Train on the training set, validating every epoch; then export the original-stride "
        "model. Resume with --ckpt_path <checkpoint> or --ckpt_path last."
    ),
    "validate": "Score a checkpoint on the validation set, at any output stride.",
    "test": "Score a checkpoint on the test set, at any output stride.",
    "predict": "Run a checkpoint on the prediction set (pictures: PredictionImageWriter).",
}


def _summary_line(obj: object) -> str:
    """The first docstring line, reST roles and literals made plain text."""
    doc = inspect.getdoc(obj) or ""
    line = doc.splitlines()[0] if doc else ""
    return re.sub(r"(?::\w+:)?`+([^`]+)`+", r"\1", line)


def _listing(title: str, entries: list[tuple[str, str]]) -> list[str]:
    width = max((len(name) for name, _ in entries), default=0)
    return [title, *(f"  {name:<{width}}  {text}".rstrip() for name, text in entries)]


def _config_title(path: Path) -> str:
    first = path.read_text().splitlines()[:1]
    return first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""


def _classes(module: object, base: type) -> list[tuple[str, str]]:
    """The concrete ``base`` subclasses a package exports, with their summary lines."""
    entries = []
    for name in module.__all__:
        value = getattr(module, name)
        # Protocols and abstract bases are exported too, but cannot be a class_path.
        if not (inspect.isclass(value) and issubclass(value, base)) or name.startswith("Base"):
            continue
        entries.append((name, _summary_line(value)))
    return entries


def epilog() -> str:
    """The tasks, data modules and configs that ``--help`` lists."""
    lines = _listing("tasks (model.class_path):", _classes(dense_lightning.tasks, LightningModule))
    data = _classes(dense_lightning.data, LightningDataModule)
    lines += ["", *_listing("data (data.class_path):", data)]
    if CONFIGS.is_dir():  # a source checkout; an installed wheel has no configs folder
        configs = [
            (str(path.relative_to(CONFIGS.parent)), _config_title(path))
            for path in sorted(CONFIGS.glob("*/*.yaml"))
            if path.parent.name != "sweeps"
        ]
        lines += ["", *_listing("configs (-c/--config):", configs)]
    lines += [
        "",
        "examples:",
        f"  {PROG} fit -c configs/segmentation/quickstart.yaml",
        f"  {PROG} fit -c configs/segmentation/quickstart.yaml --model.init_args.output_stride 16",
        f"  {PROG} fit -c configs/segmentation/quickstart.yaml --ckpt_path last   # resume",
        f"  {PROG} validate -c <config> --ckpt_path <run>/checkpoints/last.ckpt",
    ]
    return "\n".join(lines)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help formatter, keeping the line breaks of the description and epilog."""
