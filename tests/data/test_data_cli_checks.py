"""Bad dataset paths and files stop the real CLI before any Trainer, logger or run folder."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

VOC_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "segmentation" / "voc.yaml"
SMALL_MODEL = ["--model.init_args.pretrained", "false", "--model.init_args.backbone", "resnet18"]


def run_until_error(run_cli, capsys, root: Path) -> str:
    with pytest.raises((SystemExit, ValueError)) as info:
        run_cli("fit", "-c", VOC_CONFIG, "--data.init_args.root", root, *SMALL_MODEL)
    if isinstance(info.value, SystemExit):
        assert info.value.code != 0
    return capsys.readouterr().err + str(info.value)


# The data module is built before the model, so these fail in seconds: no weights are fetched.
def test_missing_root_stops_the_cli_before_anything_is_written(run_cli, capsys, tmp_path):
    missing = tmp_path / "data" / "VOC2012"
    text = run_until_error(run_cli, capsys, missing)
    assert f"dataset root not found: {missing}" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no wandb/, logs or config.yaml


def test_bad_files_stop_the_cli_before_anything_is_written(run_cli, capsys, tmp_path, voc_root):
    Image.fromarray(np.full((30, 40), 42, np.uint8), mode="L").save(
        voc_root / "SegmentationClass" / "a.png"
    )
    text = run_until_error(run_cli, capsys, voc_root)
    assert "SegmentationClass/a.png (label 42)" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voc"]
