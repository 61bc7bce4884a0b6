"""The ``dense-lightning`` command: LightningCLI with any task and any DataModule by class path.

Examples::

    dense-lightning fit --config configs/segmentation/quickstart.yaml
    dense-lightning fit -c configs/segmentation/quickstart.yaml --model.init_args.output_stride 16
    dense-lightning validate -c configs/segmentation/quickstart.yaml --ckpt_path last.ckpt
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

# Imported so that short class names ("SemanticSegmentationTask", "DenseConversion") resolve.
import dense_lightning.data
import dense_lightning.tasks
from dense_lightning.callbacks import default_callbacks
from dense_lightning.callbacks.run_config import SaveRunConfig
from dense_lightning.equivalent import NotEquivalentError
from dense_lightning.errors import ConfigurationError

__all__ = ["DenseLightningCLI", "create_cli", "main"]

PROG = "dense-lightning"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DESCRIPTION = (
    "Train any timm CNN densely (its strided layers made dilated, exactly equivalent to the "
    "original network) with PyTorch Lightning, then export the original fast network with "
    "the trained weights. Run a subcommand with --help for all its options."
)
# Errors that are the user's to fix: printed as one line, exit status 2, no traceback.
USER_ERRORS = (ConfigurationError, NotEquivalentError)


def _runs_on_cuda(accelerator: Any) -> bool:
    """Whether a ``trainer.accelerator`` setting ends up on CUDA devices."""
    if isinstance(accelerator, str):
        if accelerator == "auto":
            return torch.cuda.is_available()
        return accelerator in ("cuda", "gpu")
    return "cuda" in type(accelerator).__name__.lower()


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


def epilog() -> str:
    """The tasks, data modules and configs that ``--help`` lists."""
    tasks = [
        (name, _summary_line(getattr(dense_lightning.tasks, name)))
        for name in dense_lightning.tasks.__all__
        if name != "BaseTask"
    ]
    data = [
        (name, _summary_line(getattr(dense_lightning.data, name)))
        for name in dense_lightning.data.__all__
        if name.endswith("DataModule") and name != "BaseDataModule"
    ]
    lines = _listing("tasks (model.class_path):", tasks)
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
        f"  {PROG} validate -c <config> --ckpt_path <run>/checkpoints/last.ckpt",
    ]
    return "\n".join(lines)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help formatter, keeping the line breaks of the description and epilog."""


def _type_name(text: str) -> str:
    """``<class 'int'>`` -> ``int``, ``NoneType`` -> ``null``, Literal[...] -> its values."""
    text = text.strip()
    literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", text)
    if literal:
        return f"one of {literal.group(1)}"
    name = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    return "null" if name == "NoneType" else name


def one_line(message: str) -> str:
    """The nested validation message of jsonargparse as one line: key, what was expected, given.

    ``Parser key "output_stride": Does not validate against any of the Union subtypes ...
    Given value: eight`` becomes ``output_stride: expected int or null, got 'eight'``.
    Messages of another shape keep their text, joined into one line.
    """
    keys = re.findall(r'Parser key "([^"]+)"', message)
    unknown = re.search(r"Option '([^']+)' is not accepted", message)
    if unknown:
        return f"unknown option {unknown.group(1)!r}" + (f" for {keys[0]}" if keys else "")
    if not keys:
        return " ".join(message.split())
    inner = message[message.rindex(f'Parser key "{keys[-1]}"') :]
    expected = re.findall(r"Expected an? (.+?)(?:\. Got value:|$)", inner, flags=re.MULTILINE)
    given = re.search(r"(?:Given value|Got value): (.*)", inner)
    names = list(dict.fromkeys(_type_name(e) for e in expected))
    line = f"{keys[-1]}: expected {' or '.join(names) or 'another value'}"
    return line + (f", got {given.group(1).strip()!r}" if given else "")


class DenseArgumentParser(LightningArgumentParser):
    """LightningCLI's parser whose errors are one line, not the usage and a nested report."""

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # jsonargparse also calls error() on inner parsers to try alternatives (exit_on_error
        # off): those must raise as before.
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        _fail(f"{one_line(message)} (see {self.prog.replace(' [options]', '')} --help)")


def _fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def user_error(error: BaseException) -> BaseException | None:
    """The library's configuration error behind ``error`` (jsonargparse wraps them), if any."""
    for link in _chain(error):
        if isinstance(link, USER_ERRORS):
            return link
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


class DenseLightningCLI(LightningCLI):
    """LightningCLI for dense-lightning.

    - Subclass mode for model and data: ``model.class_path`` names any LightningModule
      (e.g. ``SemanticSegmentationTask``), ``data.class_path`` any LightningDataModule.
    - The config is saved into the run's own folder (beside checkpoints and exports, for
      every logger, wandb included), with ``overwrite=True`` so re-runs work.
    - ``trainer.sync_batchnorm: true`` and ``precision: 16-mixed`` (GPU settings of the
      configs) become ``false`` and ``32-true`` when the run is not on CUDA, where they cannot
      run; the same config then trains on one CPU, with ``strategy: ddp`` as one process.
    - Bad arguments and the library's configuration errors (``ConfigurationError``,
      ``NotEquivalentError``) end the command with one line ``dense-lightning: error: ...``
      and exit status 2; any other exception keeps its traceback.
    - Every run gets a rich progress bar with the metrics that matter and, after ``fit``, a
      summary table (checkpoints, exported weights, equivalence error, dense vs exported
      metric and cost, baselines), unless the config lists its own progress bar or summary.
    """

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        _check_files(config)
        trainer = config.trainer
        if _runs_on_cuda(trainer.get("accelerator", "auto")):
            return
        # GPU settings of the configs that cannot run elsewhere; everything else is kept.
        if trainer.get("sync_batchnorm"):
            rank_zero_info("sync_batchnorm switched off: SyncBatchNorm needs CUDA devices.")
            trainer.sync_batchnorm = False
        if str(trainer.get("precision")) in ("16-mixed", "16"):
            rank_zero_info("precision 16-mixed -> 32-true: float16 AMP needs CUDA devices.")
            trainer.precision = "32-true"

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # A rich bar with the numbers that matter and a fit summary table, unless the config
        # brings its own.
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        kwargs.setdefault("callbacks", [*callbacks, *default_callbacks(config)])
        return super().instantiate_trainer(**kwargs)


def _check_files(config: Any) -> None:
    """Fail on a missing local file named in the model's arguments, before anything is built."""
    model = config.get("model")
    init_args = model.get("init_args") if model is not None and hasattr(model, "get") else None
    path = init_args.get("checkpoint_path") if init_args is not None else None
    if path is not None and not Path(path).is_file():
        raise ConfigurationError(
            f"model.init_args.checkpoint_path: no such file: {path}. Give a file of backbone "
            "weights under timm names (e.g. <run>/exports/backbone_<name>.pth), or remove it."
        )


def create_cli(args: ArgsType = None, run: bool = True) -> DenseLightningCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]``.

    Raises:
        SystemExit: with status 2 on bad arguments and configuration errors, after printing
            them as one line.
    """
    try:
        return DenseLightningCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_class=DenseArgumentParser,
            parser_kwargs={
                "prog": PROG,
                "description": textwrap.fill(DESCRIPTION, width=88),
                "epilog": epilog(),
                "formatter_class": _HelpFormatter,
            },
            save_config_callback=SaveRunConfig,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise
        _fail(" ".join(str(cause).split()) if isinstance(cause, ConfigurationError) else str(cause))


def main(args: ArgsType = None) -> None:
    """Entry point of ``dense-lightning`` and ``python -m dense_lightning``."""
    create_cli(args)
