"""The image-level accuracy benchmark: --quick writes the report with every arm and claim."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import accuracy_image as bench
from benchmarks import readme
from benchmarks._image_report import ARMS, CLAIMS


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("image")
    return out, bench.main(["--quick", "--out", str(out)])


@pytest.mark.parametrize(
    ("task", "stem"),
    [("classification", "accuracy_image"), ("regression", "accuracy_image_regression")],
)
def test_quick_report_has_every_arm_claim_and_check(quick, task, stem):
    out, returned = quick
    payload = json.loads((out / f"{stem}.json").read_text())
    assert payload == json.loads(json.dumps(returned[task], default=str))
    assert payload["task"] == task and payload["complete"] is True
    assert set(payload["starts"]) == {"imagenet", "scratch"}
    assert payload["starts"]["imagenet"]["backbone"] == "tf_efficientnet_lite0"
    for key in ("platform", "cpu_count", "torch", "torch_threads", "date", "cpu_seconds"):
        assert key in payload["machine"]
    k = payload["settings"]["k"]
    for start in payload["starts"].values():
        runs = start["runs"]
        assert len(runs) == len(payload["settings"]["seeds"]) >= 2
        for run in runs:
            assert "replicates" not in run  # tensors stay out of the JSON
            assert set(run["metric"]) == set(ARMS)
            if task == "classification":
                assert all(0.0 <= v <= 1.0 for v in run["metric"].values())
            else:
                assert all(v >= 0.0 for v in run["metric"].values())
            assert run["training"]["base"]["steps"] == run["training"]["dense"]["steps"]
            # The export is the dense phase 0 (asserted inside too), at the baseline's cost.
            assert run["export_max_rel_error"] < 1e-4
            assert run["metric"]["exported"] == pytest.approx(run["metric"]["dense_p0"], abs=1e-4)
            cost = run["cost"]
            assert cost["base_tta"]["macs"] == pytest.approx(k * k * cost["base"]["macs"])
            assert cost["base"]["macs"] < cost["dense"]["macs"] < cost["base_tta"]["macs"]
        summary = start["summary"]
        assert set(summary["comparisons"]) == set(CLAIMS)
        for key, c in summary["comparisons"].items():
            assert c["ci_images"][0] <= c["ci_images"][1]
            assert c["verdict"] in ("holds", "reversed", "inconclusive")
            # The difference is the improvement: accuracy gained, or error removed.
            first, second = (summary["arms"][a]["mean"] for a in key.split("-"))
            sign = 1 if task == "classification" else -1
            assert c["diff"] == pytest.approx(sign * (first - second))
    md = (out / f"{stem}.md").read_text()
    assert md.startswith(f"# Accuracy (image {task})")
    assert "(c) beats (a) at (a)'s test cost" in md and "From scratch" in md
    section = "\n".join(readme.image_section(payload, stem))
    assert f"Accuracy, image {task}" in section and "(b-mean) beats (a-tta)" in section


def test_shifted_views_are_the_phases_of_the_dense_lattice():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    views = bench.shifted(images, 2, 4)
    assert len(views) == 4 and all(v.shape == images.shape for v in views)
    torch.testing.assert_close(views[0], images)
    # View (0, 1): the image moved 4 px left, zeros behind.
    torch.testing.assert_close(views[1][..., :4], images[..., 4:])
    assert torch.all(views[1][..., 4:] == 0)
    torch.testing.assert_close(views[2][..., :4, :], images[..., 4:, :])
    torch.testing.assert_close(views[3][..., :4, :4], images[..., 4:, 4:])


def test_cuda_profile_without_a_gpu_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda"])
    assert "no CUDA device is visible" in capsys.readouterr().err


def test_docstring_names_the_command():
    assert "python -m benchmarks.accuracy_image" in bench.__doc__
