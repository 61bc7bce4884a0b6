"""A task network's structure in checkpoints, and the output stride chosen at run time.

The structure a checkpoint was saved with (dense at some output stride, or original) is
recorded next to the weights; the hyperparameters keep no ``output_stride``, so the one given
by the config or the command line is the run-time choice. Resuming ``fit`` must keep the
saved stride; ``validate``, ``test`` and ``predict`` may run the same weights at any stride.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from dense_lightning.errors import ConfigurationError
from dense_lightning.models import apply_dense_state, dense_state, make_dense

__all__ = ["checkpoint_hparams", "run_time_structure"]


def checkpoint_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters to store in a checkpoint.

    Without ``output_stride``: LightningCLI puts a checkpoint's hyperparameters back over the
    command line's, so `validate --model.init_args.output_stride 4 --ckpt_path ...` would
    silently run at the checkpoint's stride. Without the starting weights: the checkpoint
    holds the trained ones, and reloading it must not download or read them again (offline
    machines, moved files).
    """
    kept = {key: value for key, value in hparams.items() if key != "output_stride"}
    kept.update(pretrained=False, checkpoint_path=None)
    return kept


def run_time_structure(
    network: nn.Module,
    saved: dict[str, Any] | None,
    wanted: int | None,
    fn: TrainerFn | None,
    strict: bool,
) -> tuple[nn.Module, int | None]:
    """Restore the saved structure, then convert it to the stride the run asks for.

    Args:
        network: the task's network, as built from the hyperparameters.
        saved: the checkpoint's recorded dense state (``None``: original structure).
        wanted: the output stride of the hyperparameters (config or command line).
        fn: what the trainer runs (``None`` outside a trainer: ``load_from_checkpoint``,
            which gives the saved structure).
        strict: refuse layers that cannot be made exactly equivalent.

    Returns:
        The network and the output stride it now has.

    Raises:
        ConfigurationError: ``fit`` resumes at another stride than the saved one.
    """
    saved_stride = None if saved is None else int(saved["output_stride"])
    network = apply_dense_state(network, saved)
    if wanted == saved_stride or fn is None:
        return network, saved_stride
    if fn == TrainerFn.FITTING:
        raise ConfigurationError(
            f"The checkpoint was trained at output_stride={saved_stride} but fit resumes at "
            f"output_stride={wanted}; resuming must keep the stride. Resume with "
            f"--model.init_args.output_stride {saved_stride}, or start a new fit from its "
            "weights (they are the same network at every stride: "
            "dense_lightning.models.make_dense(Task.load_from_checkpoint(path).model, stride) "
            "converts them)."
        )
    converted = (
        apply_dense_state(network, None)
        if wanted is None
        else make_dense(network, wanted, strict=strict)
    )
    native = (saved or dense_state(converted) or {}).get("original_stride")
    strides = {None: f"the original stride {native}"}  # an exported checkpoint, or a run at it
    saved_text = strides.get(saved_stride, f"output_stride={saved_stride}")
    rank_zero_info(
        f"Checkpoint {'trained' if saved else 'saved'} at {saved_text}; running {fn.value} at "
        f"{strides.get(wanted, f'output_stride={wanted}')} (same weights, exactly the same "
        "network)."
    )
    return converted, wanted
