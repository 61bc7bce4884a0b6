"""Every YAML in configs/segmentation runs through the real CLI: fit, validate, test, predict."""

import json
from pathlib import Path

import pytest

from dense_lightning.equivalent import is_dense

SEGMENTATION_CONFIGS = sorted(
    (Path(__file__).resolve().parents[1] / "configs" / "segmentation").glob("*.yaml")
)

# Small overrides per config; the rest of each file is used as written.
TINY = ["--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"]
OVERRIDES = {
    "quickstart.yaml": [
        "--data.init_args.batch_size", "4", "--data.init_args.num_val", "4",
        "--data.init_args.num_test", "4", "--data.init_args.num_predict", "4",
    ],
    "voc.yaml": [
        "--data.init_args.root", "{voc_root}", "--data.init_args.image_size", "32",
        "--data.init_args.num_classes", "3", "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "0", "--model.init_args.num_classes", "3",
        "--model.init_args.backbone", "resnet10t", "--model.init_args.pretrained", "false",
        "--model.init_args.head_channels", "16",
    ],
}  # fmt: skip


def test_every_config_has_overrides():
    assert {c.name for c in SEGMENTATION_CONFIGS} == set(OVERRIDES)


@pytest.mark.parametrize("config", SEGMENTATION_CONFIGS, ids=lambda p: p.name)
def test_config_runs_through_the_cli(config, run_cli, voc_root, tmp_path):
    overrides = [a.format(voc_root=voc_root) for a in OVERRIDES[config.name]]
    base = ["--config", config, *overrides]
    fit = run_cli("fit", *base, *TINY)
    assert is_dense(fit.model.model)
    exports = tmp_path / "exports"
    report = json.loads((exports / "equivalence.json").read_text())
    assert report["equivalence"]["equivalent"] and "exported_val_miou" in report["metrics"]

    checkpoint = ["--ckpt_path", exports / "model_original.ckpt"]
    validate = run_cli("validate", *base, *TINY, *checkpoint)
    assert not is_dense(validate.model.model)  # the checkpoint's structure wins over the config
    assert "val_miou" in validate.trainer.callback_metrics
    test = run_cli("test", *base, *TINY, *checkpoint)
    assert "test_miou" in test.trainer.callback_metrics
    predict = run_cli("predict", *base, *TINY, *checkpoint)
    maps = predict.trainer.predict_loop.predictions
    assert maps and maps[0].ndim == 3
