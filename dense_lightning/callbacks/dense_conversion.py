"""DenseConversion: make any LightningModule's network dense before training starts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from dense_lightning.equivalent import check_output_stride
from dense_lightning.errors import ConfigurationError
from dense_lightning.models import DENSE_STATE_KEY, apply_dense_state, dense_state, make_dense

__all__ = ["DenseConversion", "restore_dense"]


def get_network(
    pl_module: LightningModule, attribute: str, submodule: str | None = None
) -> nn.Module:
    """Return ``pl_module.<attribute>``, failing clearly when it (or its submodule) is missing."""
    network = getattr(pl_module, attribute, None)
    if not isinstance(network, nn.Module):
        raise AttributeError(
            f"{type(pl_module).__name__} has no nn.Module attribute {attribute!r} to convert; "
            "pass attribute=<name of the network attribute> (it must exist after __init__)."
        )
    if submodule is not None:
        try:
            network.get_submodule(submodule)
        except AttributeError:
            children = [name for name, _ in network.named_children()]
            raise AttributeError(
                f"{type(pl_module).__name__}.{attribute} ({type(network).__name__}) has no "
                f"submodule {submodule!r}; its children are {children}."
            ) from None
    return network


def check_submodule_name(submodule: str | None) -> None:
    """Refuse a ``submodule`` argument that is not a dotted attribute name."""
    if submodule is not None and not all(
        p.isidentifier() or p.isdigit() for p in submodule.split(".")
    ):
        raise ValueError(f"submodule must be a dotted attribute name, got {submodule!r}")


class DenseConversion(Callback):
    """Convert ``pl_module.<attribute>`` with ``to_dense`` when the trainer sets up.

    Works on any LightningModule that keeps its convertible network in an attribute; with
    ``submodule``, only that part of it (the encoder of an encoder-decoder, e.g. an smp or
    torchgeo DeepLabV3+: ``attribute="model", submodule="encoder"``) is converted. The
    hook is ``setup``: it runs before optimizers are created (they must see the converted
    modules' parameters; conversion keeps the very same tensors anyway), before DDP wraps
    the model, and before a checkpoint is restored, so a ``ckpt_path`` loads into the dense
    structure. Converting a network that is already dense at this stride does nothing.

    Args:
        output_stride: total stride of the dense network (a power of two).
        strict: refuse networks with layers that cannot be made exactly equivalent.
        attribute: name of the network attribute on the LightningModule.
        method: forward method of the network that ``to_dense`` traces.
        submodule: dotted name of the part of the network to convert (``to_dense(...,
            submodule=...)``); ``None`` converts the whole network.

    Raises:
        ValueError: ``output_stride`` is not a power of two, or ``attribute`` or
            ``submodule`` is not a name.
    """

    def __init__(
        self,
        output_stride: int = 8,
        strict: bool = True,
        attribute: str = "model",
        method: str = "forward",
        submodule: str | None = None,
    ) -> None:
        check_output_stride(output_stride)
        if not attribute.isidentifier():
            raise ValueError(f"attribute must be an attribute name, got {attribute!r}")
        if not method.isidentifier():
            raise ValueError(f"method must be a method name, got {method!r}")
        check_submodule_name(submodule)
        self.output_stride = output_stride
        self.strict = strict
        self.attribute = attribute
        self.method = method
        self.submodule = submodule

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        network = get_network(pl_module, self.attribute, self.submodule)
        current = dense_state(network, self.submodule)
        where = ".".join(filter(None, (type(pl_module).__name__, self.attribute, self.submodule)))
        if current is not None and current["output_stride"] != self.output_stride:
            raise ConfigurationError(
                f"{where} is already dense at output stride {current['output_stride']}, but "
                f"DenseConversion asks for {self.output_stride}; keep only one of the two "
                "settings."
            )
        dense = make_dense(
            network, self.output_stride, strict=self.strict, method=self.method,
            submodule=self.submodule,
        )  # fmt: skip
        if dense is not network:
            setattr(pl_module, self.attribute, dense)
            state = dense_state(dense, self.submodule) or {}
            rank_zero_info(
                f"DenseConversion: {where} stride {state['original_stride']} -> "
                f"{state['output_stride']}" + (" (approximate)" if state["approximate"] else "")
            )

    @override
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Our tasks record this themselves; a user's module may not, and then the checkpoint
        # would not say it holds a dense network.
        states = checkpoint.setdefault(DENSE_STATE_KEY, {})
        network = get_network(pl_module, self.attribute, self.submodule)
        states.setdefault(self.attribute, dense_state(network, self.submodule))

    @override
    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning calls this after setup converted the network and the weights were loaded
        # into it (the names are the same at every stride). Evaluating or predicting at
        # another stride than the one trained is the same network, exactly; resuming a fit
        # at another stride would continue an optimisation at a different resolution.
        saved = _saved_state(checkpoint, self.attribute)
        if saved is _MISSING or trainer.state.fn != TrainerFn.FITTING:
            return
        saved_stride = saved["output_stride"] if saved else None
        if saved_stride != self.output_stride:
            raise ConfigurationError(
                f"The checkpoint holds {type(pl_module).__name__}.{self.attribute} at output "
                f"stride {saved_stride}, but DenseConversion asks for {self.output_stride}; "
                f"resume with output_stride={saved_stride}, or start a new fit from the "
                "weights (load them and fit without ckpt_path)."
            )


_MISSING: Any = object()


def _saved_state(checkpoint: Mapping[str, Any], attribute: str) -> Any:
    """The recorded dense state of ``attribute``, or ``_MISSING`` when none was recorded."""
    states = checkpoint.get(DENSE_STATE_KEY)
    if not isinstance(states, Mapping) or attribute not in states:
        return _MISSING
    return states[attribute]


def restore_dense(
    module: nn.Module,
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    attribute: str = "model",
) -> nn.Module:
    """Give ``module.<attribute>`` the structure (dense or original) its checkpoint recorded.

    ``load_from_checkpoint`` builds a module from its ``__init__`` (the original structure)
    and loads the weights, whose names are the same at every stride. ``DenseConversion``
    records the structure in the checkpoint; this puts it back::

        model = MyModule.load_from_checkpoint(path)
        restore_dense(model, path, attribute="net")

    or, so that ``load_from_checkpoint`` alone gives the dense model, in the module::

        def on_load_checkpoint(self, checkpoint):
            restore_dense(self, checkpoint, attribute="net")

    Args:
        module: the module that holds the network (a LightningModule or any ``nn.Module``).
        checkpoint: a checkpoint dictionary or the path of one (loaded with ``torch.load``:
            only load files you trust, as with ``load_from_checkpoint``).
        attribute: name of the network attribute, as given to ``DenseConversion``.

    Returns:
        ``module``, with ``module.<attribute>`` converted when the recorded structure differs.

    Raises:
        ConfigurationError: the checkpoint records no structure for ``attribute``.
    """
    if not isinstance(checkpoint, Mapping):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = _saved_state(checkpoint, attribute)
    if state is _MISSING:
        recorded = sorted(checkpoint.get(DENSE_STATE_KEY) or {})
        raise ConfigurationError(
            f"The checkpoint records no dense structure for {attribute!r} (it has "
            f"{recorded or 'none'}); pass the attribute that DenseConversion converted."
        )
    network = getattr(module, attribute, None)
    if not isinstance(network, nn.Module):
        raise AttributeError(f"{type(module).__name__} has no nn.Module attribute {attribute!r}.")
    restored = apply_dense_state(network, state)
    if restored is not network:
        setattr(module, attribute, restored)
    return module
