"""wandb, offline: what a run writes to its directory, read back from the run's own files.

An offline run keeps everything in ``<save_dir>/wandb/offline-run-*/``: logged pictures as PNG
files under ``files/media/images/``, and every record (history rows, summary, artifacts,
run settings) in ``run-<id>.wandb``, a LevelDB-style log of protobuf ``Record`` messages,
read here with a small reader instead of a server.
"""

import inspect
import json
import struct
from pathlib import Path

import pytest
import wandb
import yaml
from lightning.pytorch import Trainer
from wandb.proto import wandb_internal_pb2

from dense_lightning.callbacks import InverseTransferExport
from dense_lightning.loggers import log_export_artifacts

REPO = Path(__file__).resolve().parents[1]
_BLOCK, _HEADER = 32768, 7  # LevelDB log: 32 KiB blocks, 7-byte chunk headers
_FULL, _FIRST, _LAST = 1, 2, 4


def read_records(path):
    """Yield the protobuf records of a ``.wandb`` transaction log."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    pos, parts = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer too short for a header: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        parts = chunk if kind in (_FULL, _FIRST) else parts + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record


def summarize_run(run_dir):
    """History keys, summary values, artifacts and run settings of an offline run."""
    (log,) = Path(run_dir).glob("run-*.wandb")
    out = {"history": set(), "summary": {}, "artifacts": [], "run": None}
    for record in read_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"] |= {
                item.key or "/".join(item.nested_key) for item in record.history.item
            }
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "artifact":
            artifact = record.artifact
            files = sorted(entry.path for entry in artifact.manifest.contents)
            metadata = json.loads(artifact.metadata) if artifact.metadata else {}
            out["artifacts"].append((artifact.name, artifact.type, files, metadata))
        elif kind == "run":
            out["run"] = record.run
    return out


def finish_and_flush():
    # finish() returns before wandb's service has written the run's log; teardown() stops the
    # service, which writes everything out. A later wandb.init starts a new one.
    wandb.finish()
    wandb.teardown()


@pytest.fixture
def wandb_dirs(tmp_path, monkeypatch):
    # Keep wandb's caches, staging area and settings out of the home directory.
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home" / name.lower()))
    yield tmp_path / "runs"  # does not exist yet: the logger must create it
    finish_and_flush()


def _export_flag_usable(config):
    """Whether ``--trainer.callbacks.init_args.log_artifacts=true`` reaches the export.

    It sets the option on the config's last callback, so that one must be the export, and
    the export must have the option.
    """
    last = yaml.safe_load(config.read_text())["trainer"]["callbacks"][-1]["class_path"]
    has_flag = "log_artifacts" in inspect.signature(InverseTransferExport).parameters
    return has_flag and last.endswith("InverseTransferExport")


@pytest.mark.slow
def test_fit_logs_metrics_pictures_and_artifacts_offline(run_cli, wandb_dirs):
    config = REPO / "configs/segmentation/quickstart.yaml"
    export_args = []
    if _export_flag_usable(config):
        export_args = ["--trainer.callbacks.init_args.log_artifacts=true"]
    cli = run_cli(
        "fit", "--config", config, *export_args,
        "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
        "--trainer.logger.init_args.offline=true",
        f"--trainer.logger.init_args.save_dir={wandb_dirs}",
        "--trainer.logger.init_args.project=dense-lightning-tests",
        "--trainer.logger.init_args.name=seg-offline",
        "--trainer.logger.init_args.tags=[test,segmentation]",
        "--trainer.callbacks+=dense_lightning.callbacks.summary.FitSummary",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        "--model.init_args.backbone=test_resnet", "--model.init_args.head_channels=16",
        "--data.init_args.image_size=32", "--data.init_args.batch_size=4",
        "--data.init_args.num_train=8", "--data.init_args.num_val=4",
    )  # fmt: skip
    trainer = cli.trainer
    export = next(c for c in trainer.callbacks if isinstance(c, InverseTransferExport))
    if not export_args:  # what InverseTransferExport(log_artifacts=True) does
        logged = log_export_artifacts(trainer, export.summary["files"], export.summary)
        assert [a.type for a in logged] == ["model", "equivalence-report"]
    run_id = trainer.logger.experiment.id
    finish_and_flush()

    (run_dir,) = (wandb_dirs / "wandb").glob(f"offline-run-*-{run_id}")
    run = summarize_run(run_dir)
    assert run["run"] is not None, run
    assert run["run"].project == "dense-lightning-tests"
    assert run["run"].display_name == "seg-offline"
    assert list(run["run"].tags) == ["test", "segmentation"]
    # Metrics: per step, per epoch, and the dense vs exported scores of the export.
    for key in ("train_loss_step", "val_loss", "val_miou", "exported_val_miou", "dense_val_miou"):
        assert key in run["history"], key
    assert run["summary"]["best_val_miou"] == pytest.approx(
        float(trainer.callback_metrics["val_miou"])
    )
    assert run["summary"]["equivalence_max_rel_error"] < 1e-4
    # Pictures: in the history, with captions, and as PNG files.
    assert {"val/predictions/filenames", "val/dense_vs_original/filenames"} <= run["history"]
    caption = run["summary"]["val/dense_vs_original/captions"][0]
    assert caption.startswith("epoch 0: original stride 32 vs dense stride 16")
    pictures = sorted(p.name for p in (run_dir / "files/media/images/val").glob("*.png"))
    assert [name.rsplit("_", 2)[0] for name in pictures] == ["dense_vs_original", "predictions"]
    # Artifacts: the exported weights and the equivalence report.
    artifacts = {kind: (name, files, meta) for name, kind, files, meta in run["artifacts"]}
    name, files, meta = artifacts["model"]
    assert name == f"exported-model-{run_id}"
    assert files == ["backbone_test_resnet.pth", "model_original.ckpt"]
    assert meta["equivalent"] is True and meta["dense"]["output_stride"] == 16
    assert "exported_val_miou" in meta["metrics"]
    name, files, meta = artifacts["equivalence-report"]
    assert (name, files) == (f"equivalence-{run_id}", ["equivalence.json"])
    assert meta["equivalence"]["equivalent"] is True


def test_artifacts_need_a_wandb_logger(tmp_path):
    trainer = Trainer(logger=False, default_root_dir=tmp_path)
    assert log_export_artifacts(trainer, [tmp_path / "missing.ckpt"], {}) == []


def test_artifacts_refuse_missing_files(tmp_path, wandb_dirs):
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(offline=True, save_dir=str(wandb_dirs), project="dense-lightning-tests")
    trainer = Trainer(logger=logger, default_root_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        log_export_artifacts(trainer, [tmp_path / "missing.ckpt"], {})
