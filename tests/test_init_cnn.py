"""model.init_cnn_from: the trainer loads an ImageNet-style ResNet state dict file into the backbone."""

import pytest
import torch

from clipbert.models import ClipBert
from clipbert.train import config as C
from clipbert.train.run import build_model


def _torchvision_file(tmp_path, model_cfg):
    """A torchvision-named ResNet state dict (plus the ImageNet fc the loader must drop), as a .pth file."""
    torch.manual_seed(123)
    source = ClipBert(model_cfg).cnn.backbone.state_dict()
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in source.items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    path = tmp_path / "resnet.pth"
    torch.save(state, path)
    return path, state


def test_init_cnn_from_loads_the_backbone(tmp_path):
    model_cfg = C.load("ds_synthetic").model_config()
    path, state = _torchvision_file(tmp_path, model_cfg)
    cfg = C.load("ds_synthetic", [f"model.init_cnn_from={path}"])
    assert cfg.to_dict()["model"]["init_cnn_from"] == str(path)
    model, _, _ = build_model(cfg, model_cfg)
    loaded = model.cnn.backbone.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_init_cnn_from_rejects_a_missing_file(tmp_path):
    with pytest.raises(C.ConfigError, match=r"model\.init_cnn_from=.*no such file"):
        C.load("ds_synthetic", [f"model.init_cnn_from={tmp_path / 'nope.pth'}"])


def test_init_cnn_from_rejects_a_file_without_resnet_tensors(tmp_path):
    path = tmp_path / "not_a_resnet.pth"
    torch.save({"encoder.weight": torch.randn(4, 4)}, path)
    cfg = C.load("ds_synthetic", [f"model.init_cnn_from={path}"])
    with pytest.raises(ValueError, match=r"model\.init_cnn_from=.*unrecognized ResNet checkpoint"):
        build_model(cfg, cfg.model_config())


def test_init_cnn_from_names_the_key_on_a_shape_mismatch(tmp_path):
    model_cfg = C.load("ds_synthetic").model_config()
    path, state = _torchvision_file(tmp_path, model_cfg)
    state["conv1.weight"] = torch.randn(8, 3, 7, 7)  # another width than the preset's 16
    torch.save(state, path)
    cfg = C.load("ds_synthetic", [f"model.init_cnn_from={path}"])
    with pytest.raises(ValueError, match=r"model\.init_cnn_from=.*shape mismatch for cnn\.backbone\.conv1"):
        build_model(cfg, model_cfg)
