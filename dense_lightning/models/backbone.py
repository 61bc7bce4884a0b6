"""timm feature backbones (checks, creation, weights under plain timm names) and a head on top."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from dense_lightning.errors import ConfigurationError

__all__ = ["BackboneWithHead", "check_backbone_name", "create_backbone", "timm_state_dict"]

# Wrappers timm puts around a classifier when features_only=True: FeatureHookNet keeps the whole
# model under "body", FeatureGetterNet under "model". FeatureListNet flattens the first level of
# nn.Sequential children ("stages.0" -> "stages_0"); both are undone in `timm_state_dict`.
_WRAPPER_PREFIXES = ("body.", "model.")


def check_backbone_name(name: str) -> None:
    """Raise a ValueError naming ``name`` and the closest timm models when it does not exist.

    Args:
        name: a timm model name, e.g. ``"resnet18"``.

    Raises:
        ValueError: ``name`` is not a timm model.
    """
    if timm.is_model(name):
        return
    matches = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
    raise ConfigurationError(
        f"Unknown backbone {name!r}: timm has no model of that name.{hint} "
        "See timm.list_models() for the available names."
    )


def create_backbone(
    name: str,
    *,
    out_indices: Sequence[int] = (-1,),
    pretrained: bool = False,
    checkpoint_path: str | None = None,
) -> nn.Module:
    """Create a timm backbone with ``features_only=True``.

    Args:
        name: timm model name.
        out_indices: feature levels to return (negative indices count from the deepest).
        pretrained: load timm's pretrained weights (needs network access or a local cache).
        checkpoint_path: local file with backbone weights under plain timm names (e.g. one
            written by ``InverseTransferExport``); implies loading and overrides ``pretrained``.

    Returns:
        The feature extractor; its forward returns a list of feature maps.

    Raises:
        ConfigurationError: ``checkpoint_path`` is not a file, or the pretrained weights
            cannot be fetched (offline machine, no cached copy).
    """
    check_backbone_name(name)
    kwargs: dict = {"features_only": True, "out_indices": tuple(out_indices)}
    if checkpoint_path is not None:
        if not Path(checkpoint_path).is_file():
            raise ConfigurationError(
                f"checkpoint_path {str(checkpoint_path)!r} is not a file; give the path of a "
                f"file with {name!r} backbone weights under plain timm names."
            )
        # features_only models rename modules, so timm's own checkpoint_path (loaded after
        # wrapping) would miss keys; the pretrained file overlay is loaded before wrapping.
        kwargs["pretrained_cfg_overlay"] = {"file": str(checkpoint_path)}
        return timm.create_model(name, pretrained=True, **kwargs)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as error:  # connection errors, hub cache misses and URL errors all are
        if not pretrained:
            raise
        raise ConfigurationError(
            f"Could not fetch the pretrained weights of {name!r} ({type(error).__name__}: "
            f"{_first_line(error)}). Offline? Download them where there is network (e.g. "
            f"timm.create_model({name!r}, pretrained=True) and save its state_dict), then set "
            "checkpoint_path to that file; or set pretrained: false. HF_HUB_OFFLINE=1 makes "
            "the hub fail at once instead of retrying."
        ) from error


def _first_line(error: BaseException) -> str:
    """The first line of an exception's message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def _plain_key(key: str, reference: set[str]) -> str | None:
    """Map one key of a features_only backbone to the key of the plain timm model."""
    if key in reference:
        return key
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix) and key[len(prefix) :] in reference:
            return key[len(prefix) :]
    first, _, rest = key.partition(".")
    # "stages_0" may come from "stages.0"; names can hold "_" themselves ("conv_stem"), so try
    # every split and keep the one the plain model actually has.
    for i, char in enumerate(first):
        if char == "_":
            candidate = f"{first[:i]}.{first[i + 1 :]}.{rest}"
            if candidate in reference:
                return candidate
    return None


def _reference_state_dict(name: str) -> dict[str, torch.Tensor]:
    """State dict of the plain timm model (keys and shapes are what matters)."""
    try:
        # The meta device builds it without allocating or initialising weights...
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=0).state_dict()
    except (NotImplementedError, RuntimeError):
        # ...but some timm versions run ops without meta kernels in __init__ (RegNet: unique).
        return timm.create_model(name, pretrained=False, num_classes=0).state_dict()


def timm_state_dict(backbone: nn.Module, name: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Return the backbone's weights under the names of ``timm.create_model(name, num_classes=0)``.

    The mapping is checked like a weight transfer: every key must map to a key of the plain
    model with the same shape.

    Args:
        backbone: a features_only timm backbone (dense or original; keys are the same).
        name: the timm model name it was created from.

    Returns:
        The state_dict under plain names, and the plain model's keys it does not provide
        (layers after the last feature level, e.g. ConvNeXt's ``head.norm``), sorted.

    Raises:
        KeyError: a backbone key has no counterpart in the plain model.
        ValueError: a mapped key has a different shape.
    """
    reference = _reference_state_dict(name)
    names = set(reference)
    out: dict[str, torch.Tensor] = {}
    for key, value in backbone.state_dict().items():
        plain = _plain_key(key, names)
        if plain is None:
            raise KeyError(f"Backbone key {key!r} has no counterpart in timm model {name!r}.")
        if reference[plain].shape != value.shape:
            raise ConfigurationError(
                f"Backbone key {key!r} -> {plain!r}: shape {tuple(value.shape)} != "
                f"{tuple(reference[plain].shape)} in timm model {name!r}."
            )
        out[plain] = value.detach().clone()
    return out, sorted(names - set(out))


class BackboneWithHead(nn.Module):
    """Feature backbone followed by a head that reads one feature level.

    Everything here is local (convolutions, pools, normalisation, pointwise activations),
    so ``to_dense`` converts the whole network, head included. Global steps such as resizing
    logits to the label size belong to the task, outside this module.

    Attributes:
        backbone: a features_only timm model; its forward returns a list of feature maps.
        head: maps the chosen feature map to the raw task output.
        feature_index: which element of the backbone's output list the head reads.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, feature_index: int = -1) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature_index = feature_index

    def forward(self, x: Tensor) -> Tensor:
        """Return the head output at feature resolution for images ``x`` ``[B, C, H, W]``."""
        return self.head(self.backbone(x)[self.feature_index])
