"""Which smp architectures take a dense encoder, and how their decoders follow its stride.

smp offers ``encoder_output_stride`` on DeepLabV3, DeepLabV3+ and PAN: their decoders read the
deepest features wherever they are, and a factor derived from ``encoder_output_stride`` brings
them back (DeepLabV3's head upsampling, DeepLabV3+'s upsampling before it joins the stride-4
level; PAN resizes by size). Those are the architectures a dense encoder drops into. The others
restore resolution level by level from the encoder's original strides (U-Net, FPN, ...) or were
built for them; they are refused with the reason, never with an error from inside a decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from dense_lightning.errors import ConfigurationError

__all__ = ["SUPPORTED", "Architecture", "architecture", "rescale_decoder"]


@dataclass(frozen=True)
class Architecture:
    """How an smp architecture takes a dense encoder.

    Attributes:
        output_strides: The encoder output strides smp accepts for it.
        resamplers: Modules whose upsampling factor smp derives from ``encoder_output_stride``.
    """

    output_strides: tuple[int, ...]
    resamplers: tuple[str, ...]


SUPPORTED = {
    "DeepLabV3": Architecture((8, 16), ("segmentation_head.1",)),
    "DeepLabV3Plus": Architecture((8, 16), ("decoder.up",)),
    "PAN": Architecture((16, 32), ()),
}

# Decoders that upsample each encoder level by 2 (or to the next level's size) and join it
# with the next finer level: they restore resolution from the encoder's own strides.
_LEVEL_BY_LEVEL = ("Unet", "UnetPlusPlus", "FPN", "Linknet", "MAnet", "DPT")


def architecture(name: str, output_stride: int) -> Architecture:
    """The :class:`Architecture` of the smp class ``name``, checked for ``output_stride``.

    Raises:
        ConfigurationError: Naming why the architecture or the stride cannot take a dense
            encoder, and what to use instead.
    """
    supported = ", ".join(f"smp.{n}" for n in SUPPORTED)
    if name in _LEVEL_BY_LEVEL:
        raise ConfigurationError(
            f"smp.{name} cannot take a dense encoder: its decoder restores resolution level by "
            "level, upsampling each encoder level by 2 and joining it with the next finer one, "
            f"so it needs the encoder's original strides; a dense encoder at output stride "
            f"{output_stride} delivers every deeper level at stride {output_stride}. Use "
            f"{supported} (their decoders take encoder_output_stride), or keep smp.{name} as "
            "it is: it already predicts at stride 1 (to_dense(model, 1) returns it unchanged)."
        )
    if name not in SUPPORTED:
        raise ConfigurationError(
            f"smp.{name} has no encoder_output_stride: its decoder was built for the "
            f"encoder's original strides. Dense encoders drop into {supported}."
        )
    arch = SUPPORTED[name]
    if output_stride not in arch.output_strides:
        raise ConfigurationError(
            f"smp.{name} takes encoder output stride {' or '.join(map(str, arch.output_strides))}"
            f", got {output_stride}"
        )
    return arch


def rescale_decoder(model: nn.Module, arch: Architecture, old: int, new: int) -> None:
    """Set the upsampling factors that follow the encoder stride from ``old`` to ``new``.

    Each factor is multiplied by ``new / old``, so the model's outputs keep their stride
    (DeepLabV3 built with ``encoder_output_stride=16`` upsamples by 16; at 8 by 8), exactly as
    smp sets them when built with ``encoder_output_stride=new``.
    """
    if old == new:
        return
    for path in arch.resamplers:
        module = model.get_submodule(path)
        factor = (module.scale_factor if isinstance(module, nn.Upsample) else 1.0) * new / old
        if factor < 1 or factor != int(factor):
            raise ConfigurationError(
                f"{type(model).__name__}.{path} upsamples by a factor that cannot follow the "
                f"encoder stride from {old} to {new}; build the model with "
                f"encoder_output_stride={new} instead"
            )
        parent, _, leaf = path.rpartition(".")
        if isinstance(module, nn.Upsample):
            module.scale_factor = float(factor)
        else:  # smp's heads use Identity for a factor of 1
            upsample = nn.Upsample(scale_factor=float(factor), mode="bilinear", align_corners=True)
            setattr(model.get_submodule(parent), leaf, upsample)
