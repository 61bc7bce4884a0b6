import pytest
import timm
import torch

from dense_lightning.errors import ConfigurationError
from dense_lightning.models import create_backbone, timm_state_dict
from dense_lightning.tasks import SemanticSegmentationTask


class _HubUnreachable(OSError):
    """What the hub client raises offline (requests' ConnectionError is an OSError too)."""


def _offline(monkeypatch):
    calls = []
    real = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        calls.append(pretrained)
        if pretrained and "pretrained_cfg_overlay" not in kwargs:
            raise _HubUnreachable("Max retries exceeded with url: /timm/resnet18.a1_in1k")
        return real(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    return calls


def test_pretrained_offline_says_how_to_give_local_weights(monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(ConfigurationError) as info:
        create_backbone("test_resnet", pretrained=True)
    message = str(info.value)
    assert "Could not fetch the pretrained weights of 'test_resnet'" in message
    assert "checkpoint_path" in message and "Max retries exceeded" in message
    assert isinstance(info.value.__cause__, OSError)
    # The task fails the same way, when it is built.
    with pytest.raises(ConfigurationError, match="checkpoint_path"):
        SemanticSegmentationTask(backbone="test_resnet", pretrained=True)


def test_other_errors_are_not_reworded(monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(timm, "create_model", broken)
    with pytest.raises(OSError, match="disk full") as info:
        create_backbone("test_resnet", pretrained=False)
    assert not isinstance(info.value, ConfigurationError)


def test_local_checkpoint_path_loads_offline(monkeypatch, tmp_path):
    calls = _offline(monkeypatch)
    source = create_backbone("test_resnet")
    weights = tmp_path / "backbone.pth"
    torch.save(timm_state_dict(source, "test_resnet")[0], weights)
    loaded = create_backbone("test_resnet", pretrained=True, checkpoint_path=str(weights))
    assert calls[-1] is True  # loaded from the file, no hub involved
    for (name, a), (_, b) in zip(
        source.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_missing_checkpoint_path_names_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigurationError, match=r"nope\.pth' is not a file"):
        create_backbone("test_resnet", checkpoint_path=str(missing))
