"""Checkpoints of deployable classifiers: weights, architecture, resolved config and metadata in one file.

Loaded with `weights_only=True`, so a checkpoint can hold tensors and plain data but never code.
"""

from __future__ import annotations

import io

import torch

from raygap import storage
from raygap.errors import UserError
from raygap.models import Classifier, build_model

FORMAT = "raygap-classifier-1"


def arch_of(model: Classifier, name: str, in_shape) -> dict:
    neck_width = getattr(model.neck, "width", 0)  # a ResidualMLP neck (DRRDN trains one); Identity otherwise
    return {"model": name, "in_shape": list(in_shape), "num_classes": model.head.out_features,
            "neck_width": neck_width}


def save(path: str, model: Classifier, arch: dict, config: dict, meta: dict) -> str:
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "arch": arch, "state_dict": state, "config": config, "meta": meta}, buffer)
    storage.write_bytes(path, buffer.getvalue())
    return path


def load(path: str, map_location="cpu") -> tuple[Classifier, dict]:
    """(model in eval mode, the whole payload); a corrupt or foreign file raises UserError."""
    if not storage.exists(path):
        raise UserError(f"checkpoint {path} does not exist")
    payload = _read(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a raygap checkpoint (made by raygap.pretrain / raygap.train)")
    arch = payload["arch"]
    channels = arch["in_shape"][0]
    model = build_model(arch["model"], arch["in_shape"], arch["num_classes"], [0.0] * channels, [1.0] * channels,
                        neck_width=arch["neck_width"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise UserError(f"checkpoint {path} does not match its architecture {arch['model']}: "
                        f"{str(err).splitlines()[0]}") from None
    return model.eval(), payload


def _read(path: str, map_location="cpu"):
    try:
        return torch.load(io.BytesIO(storage.read_bytes(path)), map_location=map_location, weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read checkpoint {path}: {reason}") from None


def load_start(path: str, model_name: str, in_shape, num_classes: int, mean, std) -> Classifier:
    """The model a run starts from (`pretrained=`): a raygap checkpoint, its architecture checked against
    the run's; or the state dict of a torchvision-layout ImageNet ResNet (torchvision's own weights files,
    the AFD authors' ImageNet model-100.pth; a "module." prefix of DataParallel is dropped), loaded into
    the run's model: its `fc` becomes the head, the rest the backbone; normalisation is the data's."""
    if not storage.exists(path):
        raise UserError(f"checkpoint {path} does not exist")
    payload = _read(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        model, payload = load(path)
        check_compatible(payload["arch"], path, model_name, in_shape, num_classes)
        return model
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    state = {key.removeprefix("module."): value for key, value in state.items()} if isinstance(state, dict) else {}
    if "fc.weight" not in state or not model_name.endswith("_imagenet"):
        raise UserError(f"{path} is neither a raygap checkpoint nor the state dict of a torchvision ImageNet "
                        f"ResNet (for model=resnet18_imagenet or resnet50_imagenet)")
    model = build_model(model_name, in_shape, num_classes, mean, std)
    renamed = {f"head.{key[3:]}" if key.startswith("fc.") else f"backbone.{key}": value for key, value in state.items()}
    if state["fc.weight"].shape != model.head.weight.shape:
        raise UserError(f"{path} classifies {state['fc.weight'].shape[0]} classes of {state['fc.weight'].shape[1]}"
                        f"-wide features; model={model_name} on this data has {num_classes} of {model.feature_dim}")
    try:
        missing, unexpected = model.load_state_dict(renamed, strict=False)
    except RuntimeError as err:
        raise UserError(f"{path} does not fit model={model_name}: {str(err).splitlines()[-1].strip()}") from None
    missing = [key for key in missing if key not in ("mean", "std")]  # the data's normalisation, not the file's
    if missing or unexpected:
        raise UserError(f"{path} does not fit model={model_name}: "
                        f"{'missing ' + missing[0] if missing else 'unexpected ' + unexpected[0]}")
    return model.eval()


def check_compatible(arch: dict, path: str, model_name: str, in_shape, num_classes: int) -> None:
    """Refuse a checkpoint made for another architecture or other images than the configured ones."""
    if arch["model"] != model_name:
        raise UserError(f"checkpoint {path} is a {arch['model']}, but model={model_name} is configured; "
                        f"pass model={arch['model']}")
    if list(in_shape) != list(arch["in_shape"]) or num_classes != arch["num_classes"]:
        raise UserError(f"checkpoint {path} takes {tuple(arch['in_shape'])} images in {arch['num_classes']} "
                        f"classes, but the configured data has {tuple(in_shape)} images in {num_classes} classes; "
                        f"pass the data= it was trained on")
