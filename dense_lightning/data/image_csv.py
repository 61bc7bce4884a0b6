"""Image regression (a scalar per image, such as apparent age) from a local folder and CSV files.

Layout (split names configurable)::

    root/train.csv        header ``file,value``; one image per line
    root/val.csv
    root/<any path>.jpg   ``file`` is relative to ``root`` (or absolute)

A CSV file has a header naming the columns ``file`` and ``value`` (others are ignored), then
one line per image: its path and its target, a finite number. Samples are resized as in the
other folder modules: training samples get a random scale, crop and horizontal flip, the
others are letterboxed to ``image_size``.

The DataModule checks every CSV file when it is built: a missing file, a header without
``file`` and ``value``, a line with too few fields, a value that is not a finite number and a
listed image that does not exist are each named with the CSV file and line; with
``verify=True`` (the default) every listed image is also decoded. All problems are reported
together in one :class:`~dense_lightning.data.verify.DatasetError`, before a Trainer or
logger exists.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from dense_lightning.data.base import (
    BaseDataModule,
    Split,
    check_range,
    check_scale_range,
    load_image,
    require_path,
)
from dense_lightning.data.image_folder import fit_image, split_names
from dense_lightning.data.verify import (
    FileProblems,
    check_image,
    is_local_leader,
    map_files,
    missing_layout,
)

__all__ = [
    "CSV_COLUMNS",
    "ImageCSVRegressionDataModule",
    "ImageCSVRegressionDataset",
    "Row",
    "check_value_csvs",
    "read_value_csv",
]

#: The columns every CSV file must name in its header.
CSV_COLUMNS = ("file", "value")


@dataclass(frozen=True)
class Row:
    """One image of a CSV file: where it was listed, its path and its target."""

    line: int
    path: Path
    value: float


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_value_csv(csv_path: Path, root: Path, problems: FileProblems) -> list[Row]:
    """The rows of a ``file,value`` CSV file; bad lines go to ``problems``, not into the rows.

    Args:
        csv_path: the CSV file.
        root: the folder ``file`` paths are relative to.
        problems: where a bad header or bad lines are recorded, each with its line number.

    Returns:
        The good rows (with an existing image file), in file order.
    """
    rows: list[Row] = []
    before = len(problems)
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        names = [name.strip() for name in header or []]
        if not set(CSV_COLUMNS) <= set(names):
            got = ",".join(names) if names else "an empty file"
            problems.add("header lacks the columns file,value", csv_path, f"line 1: {got}")
            return rows
        file_col, value_col = names.index("file"), names.index("value")
        for fields in reader:
            line = reader.line_num
            if not any(field.strip() for field in fields):
                continue  # blank lines carry nothing
            if len(fields) <= max(file_col, value_col):
                problems.add("line with too few fields", csv_path, f"line {line}: {fields}")
                continue
            name, text = fields[file_col].strip(), fields[value_col].strip()
            value = _number(text)
            if value is None:
                problems.add("value is not a finite number", csv_path, f"line {line}: {text!r}")
                continue
            path = root / name
            if not name or not path.is_file():
                problems.add("listed image missing", path, f"{csv_path.name} line {line}")
                continue
            rows.append(Row(line, path, value))
    if not rows and len(problems) == before:
        problems.add("CSV file lists no images", csv_path, "only a header")
    return rows


def check_value_csvs(
    root: Path, csv_files: list[Path], verify: bool = True
) -> tuple[dict[Path, list[Row]], FileProblems]:
    """Read every CSV file (each once) and, with ``verify``, decode every listed image.

    Returns:
        The rows of each CSV file and the problems (``raise_if_any()`` raises them).
    """
    problems = FileProblems(root, "image CSV folder")
    rows = {path: read_value_csv(path, root, problems) for path in dict.fromkeys(csv_files)}
    images = [r.path for rs in rows.values() for r in rs if problems.first_visit(r.path)]
    if verify:
        for path, result in zip(images, map_files(check_image, images), strict=True):
            if isinstance(result, str):
                problems.add("unreadable image", path, result)
    return rows, problems


class ImageCSVRegressionDataset(Dataset):
    """One split of an image CSV folder; samples ``{"image", "target"}`` (float32 target).

    Args:
        root: dataset root, holding ``<split>.csv``.
        split: the CSV file's name, without ``.csv``.
        image_size: side of the square samples.
        augment: random scale, crop and flip (training) instead of the letterbox.
        scale_range: range of the random scale when ``augment``.

    Raises:
        MissingDataError: the CSV file does not exist.
        DatasetError: the CSV file has bad lines or lists missing images.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_size: int = 224,
        augment: bool = False,
        scale_range: tuple[float, float] = (0.8, 1.25),
    ) -> None:
        root = Path(root)
        csv_path = require_path(root / f"{split}.csv", f"CSV file of split {split!r}")
        problems = FileProblems(root, "image CSV folder")
        self.rows = read_value_csv(csv_path, root, problems)
        problems.raise_if_any()
        self.image_size = image_size
        self.augment = augment
        self.scale_range = scale_range

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        row = self.rows[index]
        image = fit_image(load_image(row.path), self.image_size, self.augment, self.scale_range)
        return {"image": image, "target": torch.tensor(row.value, dtype=torch.float32)}


class ImageCSVRegressionDataModule(BaseDataModule):
    """Image regression from local images listed with their targets in CSV files.

    See the module docstring for the layout and the checks. :attr:`target_mean` and
    :attr:`target_std` are the training targets' mean and standard deviation, for a task's
    ``target_mean`` / ``target_scale``.

    Args:
        root: dataset root, holding ``<split>.csv`` per split.
        image_size: side of the square samples.
        batch_size: samples per batch.
        num_workers: dataloader workers.
        train_split: CSV file (without ``.csv``) of training images.
        val_split: CSV file of validation images.
        test_split: CSV file of test images.
        predict_split: CSV file of prediction images; ``None`` uses ``test_split``.
        augment: random scale, crop and flip for training.
        scale_min: smallest training scale.
        scale_max: largest training scale.
        verify: decode every listed image when the module is built and raise one error
            listing all bad files with the CSV problems; ``False`` skips the decoding (the
            CSV files and the existence of their images are still checked).
        pin_memory: pin host memory of batches.

    Raises:
        MissingDataError: the root or a CSV file does not exist.
        DatasetError: a CSV file has bad lines, lists missing images, or an image is bad.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 0,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        predict_split: str | None = None,
        augment: bool = True,
        scale_min: float = 0.8,
        scale_max: float = 1.25,
        verify: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        self.save_hyperparameters()
        check_range("image_size", image_size, 1)
        self.scale_range = check_scale_range(scale_min, scale_max)
        self.root = root
        self.image_size = image_size
        self.splits = split_names(train_split, val_split, test_split, predict_split)
        expected: dict[str, str] = {}
        for split, name in self.splits.items():  # a file shared by splits: its first role
            expected.setdefault(f"{name}.csv", f"{split} CSV file")
        missing_layout(Path(root), expected, "an image CSV folder (<split>.csv: file,value)")
        files = [Path(root) / f"{name}.csv" for name in self.splits.values()]
        # One decoding pass per machine: a multi-GPU launch's processes read the same files.
        rows, problems = check_value_csvs(Path(root), files, verify and is_local_leader())
        problems.raise_if_any()
        values = torch.tensor([r.value for r in rows[files[0]]], dtype=torch.float64)
        self.target_mean = float(values.mean())
        self.target_std = float(values.std()) if len(values) > 1 else 0.0

    def build_dataset(self, split: Split) -> ImageCSVRegressionDataset:
        """Build the dataset of ``split``; only ``train`` is augmented."""
        return ImageCSVRegressionDataset(
            self.root,
            self.splits[split],
            image_size=self.image_size,
            augment=self.hparams.augment and split == "train",
            scale_range=self.scale_range,
        )
