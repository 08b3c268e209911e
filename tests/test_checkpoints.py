import os

import pytest
import torch

from raygap import checkpoint, config, runner
from raygap.errors import UserError


@pytest.mark.slow
def test_pretraining_twice_reuses_the_cached_checkpoint(natural_digits):
    cfg, path = natural_digits
    mtime = os.path.getmtime(path)
    again = runner.natural_model(cfg)
    assert again == {"checkpoint": path, "cached": True}
    assert os.path.getmtime(path) == mtime


@pytest.mark.slow
def test_cache_key_ignores_execution_settings_but_not_training_settings(natural_digits):
    cfg, _ = natural_digits
    base = runner.natural_key(cfg)
    same = config.load([f"storage={cfg.storage}", "pretrain.workers=2", "pretrain.cpus_per_worker=0.5"])
    other = config.load([f"storage={cfg.storage}", "pretrain.seed=1"])
    assert runner.natural_key(same) == base
    assert runner.natural_key(other) != base


@pytest.mark.slow
def test_checkpoint_holds_config_and_loads_with_weights_only(natural_digits):
    _, path = natural_digits
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == checkpoint.FORMAT
    assert payload["config"]["data"]["name"] == "digits"
    model, _ = checkpoint.load(path)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.slow
def test_foreign_and_corrupt_checkpoints_are_refused(tmp_path, natural_digits):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(UserError, match="not a raygap checkpoint"):
        checkpoint.load(str(foreign))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(open(natural_digits[1], "rb").read()[:1000])
    with pytest.raises(UserError, match="cannot read checkpoint"):
        checkpoint.load(str(corrupt))


@pytest.mark.slow
def test_checkpoint_of_another_architecture_is_refused(natural_digits):
    _, path = natural_digits
    model, payload = checkpoint.load(path)
    with pytest.raises(UserError, match="is a smallcnn, but model=resnet18"):
        checkpoint.check_compatible(payload["arch"], path, "resnet18", (1, 8, 8), 10)
    with pytest.raises(UserError, match="pass the data= it was trained on"):
        checkpoint.check_compatible(payload["arch"], path, "smallcnn", (3, 32, 32), 10)


def test_a_torchvision_resnet_state_dict_starts_a_run_with_the_same_logits(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(num_classes=5).eval()
    path = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, path)  # as DataParallel saves
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    model = checkpoint.load_start(str(path), "resnet18_imagenet", (3, 64, 64), 5, mean, std)
    x = torch.rand(2, 3, 64, 64)
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(normalised), atol=1e-5)
    with pytest.raises(UserError, match="classifies 5 classes of 512-wide features; model=resnet18_imagenet on this "
                                        "data has 10 of 512"):
        checkpoint.load_start(str(path), "resnet18_imagenet", (3, 64, 64), 10, mean, std)
    with pytest.raises(UserError, match="does not fit model=resnet50_imagenet|classifies 5 classes of 512"):
        checkpoint.load_start(str(path), "resnet50_imagenet", (3, 64, 64), 5, mean, std)
    with pytest.raises(UserError, match="neither a raygap checkpoint nor the state dict"):
        checkpoint.load_start(str(path), "resnet18", (3, 64, 64), 5, mean, std)
