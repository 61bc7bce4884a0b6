"""The undilated smp encoder behind a model, holding the model's own weight tensors.

smp's ``encoder_output_stride`` changes strides, dilations and paddings (``make_dilated`` on
its native encoders, timm's ``output_stride`` on ``tu-`` ones) but never a weight. Rebuilding
the encoder at stride 32 from the model's config and handing it the same parameter and buffer
objects therefore gives back the original network the weights belong to, the one a dense
encoder must be equivalent to. The tensors are shared, not copied, so ``requires_grad`` (a
frozen backbone), devices and dtypes carry over.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from dense_lightning.errors import ConfigurationError

try:
    import segmentation_models_pytorch as smp
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "dense_lightning.integrations.smp needs segmentation_models_pytorch: "
        "pip install 'dense-lightning[smp]'"
    ) from error

__all__ = ["encoder_spec", "encoder_stride", "is_dilated", "share_tensors", "undilated_encoder"]

#: Stride of an undilated smp encoder of depth 5.
NATIVE_STRIDE = 32


def encoder_spec(model: nn.Module) -> dict[str, Any]:
    """``get_encoder`` arguments that rebuild ``model``'s encoder (without weights or stride).

    From the model's config (smp records its constructor arguments), else from its name
    (``"<arch>-<encoder name>"``) and the encoder's own attributes.
    """
    config = dict(getattr(model, "config", None) or {})
    encoder = model.encoder
    if "encoder_name" in config:
        own = set(inspect.signature(type(model).__init__).parameters)
        return {
            "name": config["encoder_name"],
            "in_channels": config.get("in_channels", 3),
            "depth": config.get("encoder_depth", 5),
            # smp passes arguments it does not know on to the (timm) encoder.
            **{k: v for k, v in config.items() if k not in own and not k.startswith("_")},
        }
    name = getattr(model, "name", "")
    if "-" not in name:
        raise ConfigurationError(
            f"cannot tell which encoder {type(model).__name__} was built with (no config and "
            f"no '<arch>-<encoder>' name); build it with smp {smp.__version__} or later"
        )
    return {
        "name": name.split("-", 1)[1],
        "in_channels": getattr(encoder, "_in_channels", 3),
        "depth": getattr(encoder, "_depth", 5),
    }


def encoder_stride(encoder: nn.Module) -> int:
    """The stride smp says the encoder runs at (``encoder_output_stride``, capped by depth)."""
    stride = getattr(encoder, "_output_stride", NATIVE_STRIDE)
    depth = getattr(encoder, "_depth", 5)
    return min(int(stride), 2**depth)


def is_dilated(encoder: nn.Module) -> bool:
    """True when smp dilated the encoder itself (``encoder_output_stride`` below 32)."""
    return int(getattr(encoder, "_output_stride", NATIVE_STRIDE)) < NATIVE_STRIDE


def share_tensors(target: nn.Module, source: nn.Module) -> nn.Module:
    """Give ``target`` the very parameter and buffer objects of ``source`` (same names).

    Raises:
        ConfigurationError: The two do not have the same keys and shapes (so ``source`` is
            not the same network as ``target``).
    """
    mine, theirs = target.state_dict(), source.state_dict()
    shapes = {k: tuple(v.shape) for k, v in mine.items()}
    if shapes != {k: tuple(v.shape) for k, v in theirs.items()}:
        differ = sorted(set(mine) ^ set(theirs)) or [
            k for k in mine if tuple(mine[k].shape) != tuple(theirs[k].shape)
        ]
        raise ConfigurationError(
            f"the undilated encoder rebuilt from the model's config does not hold the same "
            f"weights as the model's encoder (first differing keys: {differ[:3]}); was the "
            "encoder changed after smp built it?"
        )
    sources = dict(source.named_modules())
    for name, module in target.named_modules():
        other = sources[name]
        for key in module._parameters:
            module._parameters[key] = other._parameters[key]
        for key in module._buffers:
            module._buffers[key] = other._buffers[key]
    return target.train(source.training)


def undilated_encoder(model: nn.Module, encoder: nn.Module | None = None) -> nn.Module:
    """``model``'s encoder (or ``encoder``) as the undilated network its weights belong to.

    An encoder that smp did not dilate is returned as it is; a dilated one is rebuilt at
    stride 32 from the model's config and given the encoder's own tensors.
    """
    encoder = model.encoder if encoder is None else encoder
    if not is_dilated(encoder):
        return encoder
    spec = encoder_spec(model)
    name = spec.pop("name")
    # Built with random weights (on the CPU: plain tensor attributes must be real), then every
    # parameter and buffer is replaced by the model's own.
    twin = smp.encoders.get_encoder(name, weights=None, output_stride=NATIVE_STRIDE, **spec)
    return share_tensors(twin, encoder)
