"""Exact dense encoders for smp models: a drop-in for ``encoder_output_stride``.

smp's ``encoder_output_stride`` (``make_dilated``: one dilation rate for a whole stage, the
formerly strided convolution included) and timm's ``output_stride`` are not equivalent to the
strided encoder whose weights they hold. :func:`dense_encoder` undoes them (the weights are
unchanged by them), converts the undilated encoder with
:func:`~dense_lightning.equivalent.to_dense`, which proves the dense encoder equal to the
undilated one on the lattice, and sets the decoder's upsampling for the new encoder stride, as
smp does.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from dense_lightning.equivalent import (
    check_output_stride,
    get_dense_info,
    is_dense,
    to_dense,
    to_original,
)
from dense_lightning.equivalent.submodule import check_runs, is_smp_model
from dense_lightning.errors import ConfigurationError
from dense_lightning.integrations.smp.architectures import SUPPORTED, architecture, rescale_decoder
from dense_lightning.integrations.smp.encoders import encoder_stride, smp, undilated_encoder

__all__ = ["create_model", "decoder_stride", "dense_encoder", "original_encoder"]


def decoder_stride(model: nn.Module) -> int:
    """The encoder stride ``model``'s decoder is set for now."""
    info = get_dense_info(model.encoder)
    return info.output_stride if info is not None else encoder_stride(model.encoder)


def _check_model(model: nn.Module) -> None:
    if not is_smp_model(model) or not isinstance(getattr(model, "encoder", None), nn.Module):
        raise ConfigurationError(
            f"dense_encoder takes a segmentation_models_pytorch model with an encoder, got "
            f"{type(model).__name__}; for other models use to_dense(model, stride, "
            "submodule='<encoder attribute>')"
        )


def dense_encoder(
    model: nn.Module,
    output_stride: int,
    *,
    strict: bool = True,
    inplace: bool = False,
    method: str = "forward",
    probe_size: int | None = None,
) -> nn.Module:
    """``model`` with an exact dense encoder at ``output_stride``.

    The encoder's feature levels are those of the undilated encoder, each at stride
    ``min(its stride, output_stride)`` (levels deeper than ``output_stride`` arrive at it, as
    with smp's ``make_dilated``), and equal to the undilated encoder's on the lattice. The
    decoder's upsampling follows the new encoder stride. Inputs must be a multiple of the
    undilated encoder's stride (smp checks it), so that every level's dense length is the
    original length times its lattice step.

    Args:
        model: An smp DeepLabV3, DeepLabV3Plus or PAN, built with any ``encoder_output_stride``.
        output_stride: Encoder output stride (8 or 16 for DeepLab, 16 or 32 for PAN).
        strict: Refuse encoders that cannot be made exactly equivalent (``NotEquivalentError``
            naming each module and why); ``False`` converts them approximately.
        inplace: Modify ``model`` itself; otherwise it is left untouched.
        method: Only ``"forward"`` (smp encoders return their feature levels from it).
        probe_size: Side of the smaller probe input used to trace the encoder (default 96).

    Returns:
        The model; ``model.encoder.dense_info`` records the conversion.

    Raises:
        ConfigurationError: Not an smp model, an architecture whose decoder needs the
            encoder's original strides (U-Net, FPN...), or an output stride it does not take.
        NotEquivalentError: In strict mode, for an encoder that cannot be exact.
    """
    _check_model(model)
    check_output_stride(output_stride)
    if method != "forward":
        raise ConfigurationError(f"smp encoders are traced through forward, not {method!r}")
    arch = architecture(type(model).__name__, output_stride)
    info = get_dense_info(model.encoder)
    if info is not None and info.output_stride == output_stride:
        return model if inplace else copy.deepcopy(model)
    current = decoder_stride(model)
    target = model if inplace else copy.deepcopy(model)
    encoder = target.encoder
    if is_dense(encoder):
        encoder = to_original(encoder, inplace=True)
    encoder = undilated_encoder(target, encoder)
    target.encoder = to_dense(
        encoder, output_stride, strict=strict, inplace=True, probe_size=probe_size
    )
    rescale_decoder(target, arch, current, output_stride)
    check_runs(target, "encoder", getattr(encoder, "_in_channels", 3))
    return target


def original_encoder(model: nn.Module) -> nn.Module:
    """The undilated encoder holding ``model``'s (trained) encoder weights.

    Its ``state_dict`` loads with ``strict=True`` into
    ``smp.encoders.get_encoder(name, weights=None)``, the encoder at its native stride.
    """
    _check_model(model)
    encoder = model.encoder
    if is_dense(encoder):
        return to_original(encoder)
    return copy.deepcopy(undilated_encoder(model, encoder))


def _architecture_class(arch: str) -> str:
    names = {n.lower(): n for n in dir(smp) if isinstance(getattr(smp, n), type)}
    name = names.get(arch.lower().replace("_", ""))
    if name is None or not issubclass(getattr(smp, name), nn.Module):
        raise ConfigurationError(f"smp has no architecture {arch!r}; dense encoders drop into "
                                 f"{', '.join(SUPPORTED)}")  # fmt: skip
    return name


def create_model(
    arch: str, encoder_output_stride: int = 8, strict: bool = True, **kwargs: Any
) -> nn.Module:
    """``smp.create_model`` with an exact dense encoder at ``encoder_output_stride``.

    A drop-in for ``smp.create_model(arch, encoder_output_stride=..., ...)``: the same
    model, weights and decoder, with the encoder computing what the undilated encoder
    computes, on the lattice, instead of smp's approximation.

    Args:
        arch: ``"DeepLabV3"``, ``"DeepLabV3Plus"`` or ``"PAN"`` (any case).
        encoder_output_stride: Encoder output stride.
        strict: As for :func:`dense_encoder`.
        **kwargs: Everything else ``smp.create_model`` takes (``encoder_name``,
            ``encoder_weights``, ``classes``...).

    Returns:
        The smp model with its dense encoder.
    """
    name = _architecture_class(arch)
    architecture(name, encoder_output_stride)
    model = smp.create_model(name, encoder_output_stride=encoder_output_stride, **kwargs)
    return dense_encoder(model, encoder_output_stride, strict=strict, inplace=True)
