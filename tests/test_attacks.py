import pytest
import torch

from raygap import checkpoint, data
from raygap.attacks import correct_count, make_attack


@pytest.fixture(scope="module")
def model_and_test(natural_digits):
    cfg, path = natural_digits
    model, _ = checkpoint.load(path)
    model.requires_grad_(False)
    return cfg, model, data.load(cfg.data).test


@pytest.mark.parametrize("name,norm,eps", [("fgsm", "linf", 0.1), ("pgd10", "linf", 0.1), ("cw20", "linf", 0.1),
                                           ("pgd10", "l2", 1.0), ("fgsm", "l2", 1.0)])
@pytest.mark.slow
def test_attacks_stay_in_the_ball_and_the_image_range(model_and_test, name, norm, eps):
    _, model, test = model_and_test
    x, y = data.to_float(test.x[:64]), test.y[:64]
    x_adv = make_attack(name, eps=eps, norm=norm)(model, x, y)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv != x).any(), "the attack changed nothing"


@pytest.mark.slow
def test_attack_steps_take_input_gradients_only(model_and_test):
    _, model, test = model_and_test
    model.requires_grad_(True)
    try:
        make_attack("pgd5", eps=0.1)(model, data.to_float(test.x[:16]), test.y[:16])
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.requires_grad_(False)


@pytest.mark.slow
def test_natural_model_accuracy_orders_the_attacks(model_and_test):
    cfg, model, test = model_and_test
    eps = cfg.eval.eps
    split = data.Split(test.x[:200], test.y[:200])
    torch.manual_seed(0)
    acc = {name: correct_count(model, split, make_attack(name, eps=eps), 200).item() / len(split)
           for name in ("clean", "fgsm", "pgd20")}
    assert acc["clean"] >= 0.95
    assert acc["pgd20"] <= acc["fgsm"] < acc["clean"]
    large = correct_count(model, split, make_attack("pgd20", eps=0.5), 200).item() / len(split)
    assert large <= 0.05
