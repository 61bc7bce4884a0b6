"""The base of image-level tasks: a whole timm classifier whose dense output holds phases.

A dense classifier (``to_dense`` of a timm model with its head) runs its global pool and head
per phase and returns ``[B, C, k, k]``: ``[..., i, j]`` is the classifier on the view shifted
by ``(i, j) * output_stride`` pixels, ``[..., 0, 0]`` is what the exported (``to_original``)
classifier computes. :meth:`ImageTask.postprocess` flattens any network's output to
``[B, C, P]`` phases, phase 0 first: ``P = k*k`` for the dense network, ``P = 1`` for the
exported one, a native-stride one, or the dense output's lattice subsample. The losses and
metrics of the tasks read that one layout.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import timm
from torch import Tensor, nn
from typing_extensions import override

from dense_lightning.errors import ConfigurationError
from dense_lightning.models import dense_state
from dense_lightning.tasks.base import BaseTask

__all__ = ["ImageTask", "phase_mean", "phase_zero", "phases"]


def phases(raw: Tensor) -> Tensor:
    """A classifier's output as ``[B, C, P]`` phases, phase 0 first.

    Args:
        raw: ``[B, C]`` (one phase) or ``[B, C, k, k]`` (a dense classifier's phases).

    Raises:
        ValueError: any other shape.
    """
    if raw.ndim == 2:
        return raw.unsqueeze(-1)
    if raw.ndim == 4:
        return raw.flatten(2)
    raise ValueError(
        f"expected a classifier output [B, C] or dense phases [B, C, k, k], got {tuple(raw.shape)}"
    )


def phase_zero(outputs: Tensor) -> Tensor:
    """Phase 0 of ``[B, C, P]`` phases: the exported classifier's output ``[B, C]``."""
    return outputs[..., 0]


def phase_mean(outputs: Tensor) -> Tensor:
    """The mean over the phases of ``[B, C, P]``: the dense ensemble's output ``[B, C]``."""
    return outputs.mean(-1)


def _outside(module: nn.Module, excluded: nn.Module) -> list[nn.Module]:
    """The largest submodules of ``module`` that do not hold ``excluded``."""
    kept = []
    for child in module.children():
        if child is excluded:
            continue
        if any(m is excluded for m in child.modules()):
            kept += _outside(child, excluded)
        else:
            kept.append(child)
    return kept


class ImageTask(BaseTask):
    """One prediction per image from a whole timm classifier, trained on all its phases.

    ``self.model`` is ``timm.create_model(backbone, num_classes=...)``, so the exported
    network is a plain timm classifier: its ``state_dict`` loads into that constructor with
    ``strict=True``. Subclasses say how many outputs (:meth:`num_outputs`) and how they are
    scored; the dense loss averages the per-phase loss over the ``k*k`` phases, and the
    lattice term (:class:`BaseTask`) adds the loss of phase 0, the exported classifier.

    Args:
        backbone: timm classifier name, e.g. ``"resnet18"``.
        pretrained: start from timm's pretrained weights; the classifier layer is new when
            ``num_classes`` differs from the pretrained one's.
        checkpoint_path: local file of starting weights under plain timm names (a
            classifier's, e.g. the ImageNet EfficientNet-Lite0 from
            ``dense_lightning.models.pretrained``, or one this task exported); its classifier
            layer is kept only when it has the same number of outputs as timm's default.
        **kwargs: the remaining :class:`BaseTask` arguments (``output_stride``, ``lr``...).
    """

    timm_weights: ClassVar[str] = "classifier"

    @abstractmethod
    def num_outputs(self) -> int:
        """Outputs of the classifier (classes, or 1 for a scalar)."""

    @override
    def build_head(self, in_channels: int) -> nn.Module:
        """Not used: the head is timm's own classifier, built with the model."""
        raise TypeError(
            f"{type(self).__name__} uses the whole timm classifier (configure_models); it has "
            "no separate head"
        )

    @override
    def configure_models(self) -> None:
        """``self.model``: the timm classifier with :meth:`num_outputs` outputs."""
        hp = self.hparams
        kwargs: dict[str, Any] = {"num_classes": self.num_outputs()}
        if hp.checkpoint_path is not None:
            if not Path(hp.checkpoint_path).is_file():
                raise ConfigurationError(
                    f"checkpoint_path {str(hp.checkpoint_path)!r} is not a file; give the path "
                    f"of a file with {hp.backbone!r} weights under plain timm names."
                )
            # timm's pretrained loader drops a classifier of another size, as for hub weights.
            kwargs["pretrained_cfg_overlay"] = {"file": str(hp.checkpoint_path)}
            self.model = timm.create_model(hp.backbone, pretrained=True, **kwargs)
            return
        try:
            self.model = timm.create_model(hp.backbone, pretrained=hp.pretrained, **kwargs)
        except OSError as error:
            if not hp.pretrained:
                raise
            raise ConfigurationError(
                f"Could not fetch the pretrained weights of {hp.backbone!r} "
                f"({type(error).__name__}). Offline? Save them where there is network and set "
                "checkpoint_path to that file, or set pretrained: false."
            ) from error

    @property
    @override
    def backbone_module(self) -> nn.Module:
        """Everything but the final classifier layer (what ``freeze_backbone`` freezes)."""
        return nn.ModuleList(_outside(self.model, self.model.get_classifier()))

    @override
    def timm_backbone_state_dict(
        self, network: nn.Module | None = None
    ) -> tuple[dict[str, Tensor], list[str]]:
        """The whole classifier's weights under timm's names, and no missing keys.

        Conversion keeps names, and ``self.model`` is the timm model itself, so the keys are
        those of ``timm.create_model(backbone, num_classes=...)``.
        """
        network = self.model if network is None else network
        return {k: v.detach().clone() for k, v in network.state_dict().items()}, []

    @override
    def original_stride(self) -> int:
        """The classifier's stride before its global pool (32 for most timm models)."""
        state = dense_state(self.model)
        if state is not None:
            return int(state["original_stride"])
        return int(self.model.feature_info[-1]["reduction"])

    @override
    def postprocess(self, raw: Tensor, images: Tensor) -> Tensor:
        """Any network's output as ``[B, C, P]`` phases (see :func:`phases`)."""
        return phases(raw)
