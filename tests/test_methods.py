import copy

import pytest
import torch
import torch.nn.functional as F

from raygap import checkpoint, config, data, train
from raygap.attacks import correct_count, make_attack
from raygap.loop import compile_mode, lr_factor, train_step
from raygap.methods import METHODS, afd, base, drrdn, from_scratch, mart, trades
from raygap.models import Classifier

from helpers import load


@pytest.fixture(scope="module")
def batch(natural_digits):
    cfg, path = natural_digits
    test = data.load(cfg.data).test
    return cfg, path, data.to_float(test.x[:64]), test.y[:64]


def fresh(path):
    model, _ = checkpoint.load(path)
    return model


def afd_objective(path, **params):
    p = afd.AFD.Params(**params)
    return afd.AFD(fresh(path), p, make_attack("pgd5", eps=0.1))


@pytest.mark.parametrize("size", [None, 16])
@pytest.mark.slow
def test_afd_starts_at_the_pretrained_model(batch, size):
    _, path, x, y = batch
    objective = afd_objective(path, disentangler_size=size)
    with torch.no_grad():
        torch.testing.assert_close(objective.module(x), fresh(path)(x), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_disentangler_larger_than_the_feature_is_the_full_matrix(batch, capsys):
    _, path, _, _ = batch
    module = afd_objective(path, disentangler_size=500).module
    assert isinstance(module.d1, afd.Full) and module.d1.weight.shape == (200, 200)
    assert capsys.readouterr().out.count("disentangler_size 500 exceeds the feature dimension 200") == 1


@pytest.mark.slow
def test_afd_export_folds_d1_into_the_classifier(batch):
    _, path, x, _ = batch
    module = afd_objective(path, disentangler_size=8).module
    with torch.no_grad():
        for p in module.d1.parameters():
            p.normal_(0, 0.1)  # a D1 far from the identity
        expected = module.model.head(module.d1(module.model.features(x)))
        exported = afd.AFD.export(module)
        assert not torch.allclose(expected, fresh(path)(x), atol=1e-3)
        torch.testing.assert_close(exported(x), expected, atol=1e-5, rtol=1e-5)
    assert type(exported.neck) is torch.nn.Identity and exported.head.weight.shape == (10, 200)


@pytest.mark.slow
def test_afd_split_gradient_routing(batch):
    _, path, x, y = batch
    objective = afd_objective(path, disentangler_size=16, update="split")
    module = objective.module
    with torch.no_grad():
        for d in (module.d1, module.d2):
            d.up.weight.normal_(0, 0.05)  # off the identity, so that every gradient path is open
    x_adv = objective.adversarial(module.eval(), x, y)
    parts = objective.loss(module.train(), x, y, x_adv)
    d2 = list(module.d2.parameters())
    others = [p for n, p in module.named_parameters() if not n.startswith("d2.")]

    confused = torch.autograd.grad(parts["confused"], d2 + others, allow_unused=True, retain_graph=True)
    assert all(g is not None and g.abs().sum() > 0 for g in confused[:len(d2)])
    assert all(g is None or g.abs().sum() == 0 for g in confused[len(d2):])

    rest = parts["ce_adv"] + 25 * parts["align"] + 0.25 * parts["separation"]
    grads = torch.autograd.grad(rest, d2 + others, allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads[:len(d2)])
    assert grads[len(d2)].abs().sum() > 0  # the backbone learns from the main and separation losses


# The official rule, literally: changzhang777/AFD tl+sl.py's `criterion` and its three optimisers, on a
# tiny model written here. The script runs under DataParallel on two GPUs, whose replicas are copies of
# the weights; the copies below play that part, so that, as there, every backward differentiates the
# forward at the batch's starting weights while the optimisers change the weights in place.
LR, MOMENTUM, WD, ALPHA, SIGMA, GAMMA = 0.025, 0.9, 5e-4, 0.05, 0.25, 25.0


class OfficialForward(torch.nn.Module):
    """models/resnet.py's ResNet18_FS forward with prejection=True: (logits of D1 f, of D2 stopgrad(f)),
    (D1 f, D2 f)."""

    def __init__(self, module):
        super().__init__()
        self.m = module

    def forward(self, x):
        f = self.m.model.features(x)
        feat1, feat2 = self.m.d1(f), self.m.d2(f.detach())
        return (self.m.model.head(feat1), self.m.model.head(feat2)), (feat1, feat2)


def official_step(module, teacher, x_natural, x_adv, y, optimizer, optimizer1, optimizer2):
    for opt in (optimizer, optimizer1, optimizer2):
        opt.zero_grad()
    forward = OfficialForward(module)
    replica = {name: p.clone() for name, p in forward.named_parameters()}
    (logit_nat, logit_adv), (feat1, feat2) = torch.func.functional_call(forward, replica, (x_adv,))
    pred = logit_nat.data.max(1)[1].long()
    logit = torch.scatter(logit_nat, 1, pred.unsqueeze(1), -100000)
    pred_ = logit.data.max(1)[1].long()
    indicator = pred != y
    pred_[indicator] = pred[indicator]
    with torch.no_grad():
        feat1_last = teacher.features(x_natural)
    loss_neg = ALPHA * F.cross_entropy(logit_adv, pred_)
    loss_neg.backward(retain_graph=True)
    optimizer1.step()
    loss_cos = SIGMA * torch.cosine_similarity(feat1, feat2, -1).mean()
    loss_cos.backward(retain_graph=True)
    optimizer2.step()
    loss_rob = F.cross_entropy(logit_nat, y) + GAMMA * (1 - torch.cosine_similarity(feat1, feat1_last, -1).mean())
    loss_rob.backward()
    optimizer.step()


class SGD14(torch.optim.Optimizer):
    """torch.optim.SGD as PyTorch 1.4 ran it (the versions tl+sl.py needs): the weight decay is added
    into p.grad in place, so a later optimiser over the same parameters sees it in the gradient."""

    def __init__(self, params, lr, momentum, weight_decay):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                d_p.add_(p, alpha=group["weight_decay"])  # in place: the 1.4 behaviour
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d_p.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d_p)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])


def tiny_afd():
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Tanh())
    model = Classifier(backbone, 8, 4, [0.5], [0.25])
    return afd.AFD(model, afd.AFD.Params(), attack=None)


def batches(steps):
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.rand(16, 1, 3, 4, generator=generator)
        x_adv = (x + 0.03 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
        yield x, x_adv, torch.randint(0, 4, (16,), generator=generator)


def official_run(steps, sgd=SGD14):
    """(the parameters after `steps` official steps, the elementwise bound on how far the one-step rule
    may be from them). The one-step rule is exact but for one term: the last optimiser applies weight
    decay at the parameters optimizer2 has just moved by lr * m2 (m2 its momentum buffer), so each step
    adds WD * LR * m2 to the momentum of the rest, which then moves them by LR times its running sum.
    (With SGD14 optimizer2's decay at the unmoved parameters stays in the gradient as well: exact.)"""
    objective = tiny_afd()
    module = objective.module
    d2 = list(module.d2.parameters())
    rest = [p for p in module.parameters() if all(p is not q for q in d2)]
    optimizer = sgd(rest, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    optimizer1 = sgd(d2, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    optimizer2 = sgd(rest, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    drift = [torch.zeros_like(p) for p in rest]  # sum over steps of the momentum difference's bound
    bound = [torch.zeros_like(p) for p in rest]
    for x, x_adv, y in batches(steps):
        official_step(module.train(), objective.teacher, x, x_adv, y, optimizer, optimizer1, optimizer2)
        for i, p in enumerate(rest):
            drift[i] = MOMENTUM * drift[i] + WD * LR * optimizer2.state[p]["momentum_buffer"].abs()
            bound[i] += LR * drift[i]
    bounds = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
    names = {id(p): name for name, p in module.named_parameters()}
    for p, b in zip(rest, bound):
        bounds[names[id(p)]] = b
    return dict(module.named_parameters()), bounds


def raygap_run(steps, variant="official"):
    objective = tiny_afd()
    module = objective.module
    if variant in ("split", "official_torch2"):
        objective = afd.AFD(module.model, afd.AFD.Params(update=variant), attack=None)
        objective.module.d1.load_state_dict(module.d1.state_dict())
        objective.module.d2.load_state_dict(module.d2.state_dict())
        module = objective.module
    optimizer = torch.optim.SGD(objective.param_groups(WD), lr=LR, momentum=MOMENTUM)
    for x, x_adv, y in batches(steps):
        parts = objective.loss(module.train(), x, y, x_adv)
        loss = parts["loss"]
        if variant == "single sigma":
            loss = loss - SIGMA * parts["separation"]
        if variant == "single confused on W":
            out = module(x_adv, parts=True)
            loss = loss - ALPHA * F.cross_entropy(out["confused_head_logits"], base.wrong_class(out["logits"], y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return dict(module.named_parameters())


def worst_excess(steps, variant, sgd=SGD14):
    """max over parameters of |raygap - official| / the derived bound (plus fp32 rounding)."""
    official, bounds = official_run(steps, sgd)
    mine = raygap_run(steps, variant)
    return max(((mine[n] - official[n]).abs() / (bounds[n] + 1e-6)).max().item() for n in official)


@pytest.mark.parametrize("steps", [1, 5])
def test_afd_official_update_is_the_three_optimiser_step_to_first_order(steps):
    assert worst_excess(steps, "official") <= 1.0


@pytest.mark.parametrize("variant", ["split", "single sigma", "single confused on W", "official_torch2"])
def test_afd_other_rules_are_first_order_away_from_the_official_one(variant):
    assert worst_excess(5, variant) > 10.0  # official_torch2: the decay twice where PyTorch 1.4 applied it thrice


def test_afd_official_torch2_is_the_three_optimisers_under_todays_sgd():
    assert worst_excess(5, "official_torch2", sgd=torch.optim.SGD) <= 1.0
    assert worst_excess(5, "official", sgd=torch.optim.SGD) > 10.0


def test_trades_loss_moves_batch_norm_as_the_three_official_forwards_do():
    """trades.py: CE on model(x), then KL(model(x_adv) || model(x)): batch norm's running statistics
    after one step are the official code's (a two-pass loss leaves them nearer the adversarial batch)."""
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.BatchNorm1d(8))
    model = Classifier(backbone, 8, 4, [0.5], [0.25])
    x, x_adv, y = next(batches(1))
    official = copy.deepcopy(model).train()
    logits = official(x)
    loss = F.cross_entropy(logits, y) + 6.0 * F.kl_div(F.log_softmax(official(x_adv), 1), F.softmax(official(x), 1),
                                                       reduction="sum") / len(x)
    mine = trades.TRADES(model, trades.TRADES.Params(beta=6.0), attack=None)
    parts = mine.loss(model.train(), x, y, x_adv)
    torch.testing.assert_close(parts["loss"], loss)
    bn_official, bn_mine = official.backbone[2], model.backbone[2]
    torch.testing.assert_close(bn_mine.running_mean, bn_official.running_mean)
    torch.testing.assert_close(bn_mine.running_var, bn_official.running_var)


def test_disentangler_first_step_is_the_full_step_or_its_projection():
    torch.manual_seed(0)
    dim, lr = 6, 0.1
    f, target = torch.randn(32, dim), torch.randn(32, dim)

    def first_step(d):
        loss = ((d(f) - target) ** 2).sum()
        before = d.matrix().detach().clone()
        torch.optim.SGD(d.parameters(), lr=lr).zero_grad()
        loss.backward()
        torch.optim.SGD(d.parameters(), lr=lr).step()
        return d.matrix().detach() - before

    full = afd.disentangler(dim, None)
    assert isinstance(full, afd.Full) and torch.equal(full.matrix(), torch.eye(dim))
    assert isinstance(afd.disentangler(dim, dim + 5), afd.Full)
    full_step = first_step(full)
    square = afd.LowRank(dim, dim)
    torch.testing.assert_close(first_step(square), full_step, atol=1e-5, rtol=1e-5)
    low = afd.disentangler(dim, 2)
    a = low.down.weight.detach().clone()
    torch.testing.assert_close(a @ a.T, torch.eye(2), atol=1e-6, rtol=0)  # orthonormal rows
    projected = first_step(low)
    torch.testing.assert_close(projected, full_step @ a.T @ a, atol=1e-5, rtol=1e-5)
    assert torch.linalg.matrix_rank(projected) <= 2 and projected.norm() < full_step.norm()


def test_afd_schedule_at_20_epochs_is_the_official_one():
    def adjust_learning_rate(lr, epoch):  # tl+sl.py, applied at the start of each epoch
        if epoch <= 10:
            return lr
        if epoch == 11:
            return lr * 4 / 5
        return lr / 2 if (epoch + 1) % 2 == 0 else lr

    official, lr = [], 0.025
    for epoch in range(1, 21):
        lr = adjust_learning_rate(lr, epoch)
        official.append(lr)
    steps_per_epoch = 7
    t = load("train.schedule=afd", storage="unused").train
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.025)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(t, s / (20 * steps_per_epoch)))
    for epoch in range(20):
        for _ in range(steps_per_epoch):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(official[epoch], rel=1e-12), epoch + 1
            optimizer.step()
            scheduler.step()
    assert official[10:] == pytest.approx([0.02] * 2 + [0.01] * 2 + [0.005] * 2 + [0.0025] * 2 + [0.00125] * 2)


@pytest.mark.slow
def test_drrdn_starts_at_the_pretrained_model(batch):
    _, path, x, _ = batch
    objective = drrdn.DRRDN(fresh(path), drrdn.DRRDN.Params(), make_attack("pgd5", eps=0.1))
    with torch.no_grad():
        torch.testing.assert_close(objective.module(x), fresh(path)(x), atol=1e-6, rtol=0)
        exported = drrdn.DRRDN.export(objective.module)
        torch.testing.assert_close(exported(x), fresh(path)(x), atol=1e-6, rtol=0)


def test_wrong_class_is_never_the_label():
    torch.manual_seed(0)
    logits = torch.randn(512, 10)
    y = logits.argmax(1)  # the label is the top class: the target must be the runner-up
    y[::2] = torch.randint(0, 10, (256,))
    target = base.wrong_class(logits, y)
    assert (target != y).all()
    masked = logits.clone()
    masked[torch.arange(512), y] = -float("inf")
    assert torch.equal(target, masked.argmax(1))


@pytest.mark.slow
def test_trades_with_beta_zero_is_clean_cross_entropy(batch):
    _, path, x, y = batch
    model = fresh(path).train()
    twin = copy.deepcopy(model)
    objective = trades.TRADES(model, trades.TRADES.Params(beta=0.0), make_attack("pgd5", eps=0.1))
    x_adv = objective.adversarial(model.eval(), x, y)
    loss = objective.loss(model.train(), x, y, x_adv)["loss"]
    reference = F.cross_entropy(twin(x), y)
    torch.testing.assert_close(loss, reference)
    loss.backward()
    reference.backward()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_mart_terms_match_a_hand_computed_batch():
    logits_nat = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    logits_adv = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 2])
    boosted, weighted_kl, weights = mart.terms(logits_nat, logits_adv, y)

    p_nat = logits_nat.softmax(1)
    p_adv = logits_adv.softmax(1)
    # weights: 1 - p_y(x) on the natural input
    assert weights.tolist() == pytest.approx([1 - p_nat[0, 0].item(), 1 - p_nat[1, 2].item()], abs=1e-6)
    # boosted CE: CE(x') - log(1 - p_{best wrong}(x')); the best wrong classes are 1 and 1
    ce = -(torch.log(p_adv[0, 0]) + torch.log(p_adv[1, 2])) / 2
    margin = -(torch.log(1.0001 - p_adv[0, 1]) + torch.log(1.0001 - p_adv[1, 1])) / 2
    assert boosted.item() == pytest.approx((ce + margin).item(), rel=1e-5)
    kl = (p_nat * (p_nat.log() - p_adv.log())).sum(1)
    assert weighted_kl.item() == pytest.approx((kl * weights).mean().item(), rel=1e-5)


@pytest.mark.slow
def test_every_objective_exports_a_classifier_that_matches_its_module(batch):
    _, path, x, _ = batch
    for name, method in METHODS.items():
        objective = method(fresh(path), method.Params(), make_attack("pgd5", eps=0.1))
        module = objective.module.eval()
        with torch.no_grad():
            torch.testing.assert_close(objective.export(module)(x), module(x), msg=name)


def test_compile_mode_follows_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_mode("auto", cpu, 1) is None and compile_mode("false", cuda, 1) is None
    assert compile_mode("auto", cuda, 1) == "reduce-overhead"  # CUDA graphs for one process on one GPU
    assert compile_mode("True", cuda, 2) == "default" and compile_mode("true", cpu, 1) == "default"


@pytest.mark.slow
def test_compiled_step_matches_the_eager_one(batch):
    """train.compile's path: the attack runs compiled on frozen weights (eager, on trainable ones), which
    are trainable again after it; the loss and the updated weights equal the eager step's."""
    _, path, x, y = batch
    steps = []
    for compiled in (False, True):
        torch.manual_seed(0)  # the same random start of the attack
        objective = afd_objective(path)
        module = objective.module
        attack, weights_trainable_in_attack = objective.attack, []

        def watched_attack(model, *args, **kwargs):
            weights_trainable_in_attack.append(any(p.requires_grad for p in module.parameters()))
            return attack(model, *args, **kwargs)
        objective.attack = watched_attack
        trainable = [p.requires_grad for p in module.parameters()]
        before = [p.detach().clone() for p in module.parameters()]
        net = torch.compile(module, mode=compile_mode("true", x.device, 1)) if compiled else module
        optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.05)
        parts = train_step(objective, net, net, optimizer, x, y, bf16=False, compiled=compiled)
        assert [p.requires_grad for p in module.parameters()] == trainable
        assert weights_trainable_in_attack == [not compiled]  # compiled: no weight gradients in the attack
        assert any(not torch.equal(b, p) for b, p in zip(before, module.parameters())), "the step updated nothing"
        steps.append((parts["loss"].detach(), [p.detach().clone() for p in module.parameters()]))
    (eager_loss, eager_weights), (compiled_loss, compiled_weights) = steps
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-3, atol=1e-4)
    for eager, compiled in zip(eager_weights, compiled_weights):
        torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-5)


# Fine-tuners get 8 epochs at their defaults on digits (TRADES: beta 1, search_spaces/data_method/);
# PGD-AT starts from random weights and gets 30 at a higher rate.
RUNS = {
    "vaft": [], "afd": [], "mart": [], "drrdn": [], "trades": [],
    "pgd_at": ["train.epochs=30", "train.lr=0.05"],
}


@pytest.mark.parametrize("method", sorted(RUNS))
@pytest.mark.slow
def test_short_run_raises_robust_accuracy_well_above_the_pretrained_model(tmp_path, natural_digits, method):
    cfg, path = natural_digits
    dataset = data.load(cfg.data)
    attack = make_attack(cfg.eval.val_attack, eps=cfg.eval.eps)
    torch.manual_seed(0)
    before = correct_count(fresh(path), dataset.val, attack, 500).item() / len(dataset.val)

    run_cfg = load(f"method={method}", "train.epochs=8", f"pretrained={path}", *RUNS[method], storage=tmp_path)
    result = train.run(run_cfg)
    after = result["metrics"]["robust_acc"]
    print(f"{method}: robust {before:.3f} -> {after:.3f}")
    assert after >= before + 0.10, (before, after)
    assert after < result["metrics"]["clean_acc"]
    exported, payload = checkpoint.load(result["checkpoint"])
    assert payload["meta"]["method"] == method
    torch.manual_seed(0)
    assert correct_count(exported, dataset.val, attack, 500).item() / len(dataset.val) == pytest.approx(after, abs=0.03)


@pytest.mark.slow
def test_a_first_epoch_that_halves_clean_accuracy_warns_and_names_a_lower_rate(tmp_path, natural_digits, capsys):
    _, path = natural_digits
    for lr in ([], ["train.lr=0.3"]):  # the default fine-tuning rate, and one that wrecks the natural model
        train.run(load("method=vaft", "train.epochs=1", *lr, f"pretrained={path}", storage=tmp_path))
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning: clean validation" in line]
    assert len(warnings) == 1 and "train.lr=0.3 may be too high" in warnings[0], warnings
    assert "try train.lr=0.12; if that falls as far, the method itself trades" in warnings[0]


def test_recipes_set_the_papers_regimes(tmp_path):
    afd_paper = load("recipe=afd_paper", storage=tmp_path)
    method, train = afd_paper.method, afd_paper.train
    assert (method.name, method["update"], method.disentangler_size) == ("afd", "official", None)
    assert (train.schedule, train.lr, train.epochs, afd_paper.attack.step_size) == ("afd", 0.025, 20, 0.007)
    assert (afd_paper.pretrain.epochs, afd_paper.pretrain.precision) == (100, "fp32")  # as model-100.pth
    assert not from_scratch(afd_paper)
    # the recipe's beta wins over the digits default of TRADES (beta 1)
    assert load("method=trades", storage=tmp_path).method.beta == 1.0
    official = {  # (recipe, model, epochs, lr, the official per-epoch rule of its script)
        "afd_paper": ("resnet18", 20, 0.025, None),
        "trades_paper": ("wrn34_10", 76, 0.1, lambda e: 0.1 * (0.1 if e >= 75 else 1)),
        "mart_paper": ("resnet18", 120, 0.01,
                       lambda e: 0.01 * (0.001 if e >= 100 else 0.01 if e >= 90 else 0.1 if e >= 75 else 1)),
    }
    for recipe, (model, epochs, lr, rule) in official.items():
        cfg = load(f"recipe={recipe}", storage=tmp_path)
        # a paper protocol: every training image, the last epoch, fp32, the paper's model
        assert (cfg.data.val_fraction, cfg.train.keep, cfg.train.precision) == (0, "last", "fp32"), recipe
        assert (cfg.model.name, cfg.protocol.model, cfg.train.epochs, cfg.train.lr) == (model, model, epochs, lr), \
            recipe
        if rule:
            assert from_scratch(cfg) and not cfg.train.ema
            for epoch in range(1, epochs + 1):
                assert lr * lr_factor(cfg.train, (epoch - 1) / epochs) == pytest.approx(rule(epoch), rel=1e-9), \
                    (recipe, epoch)
    assert load("recipe=trades_paper", storage=tmp_path).method.beta == 6.0
    assert load("recipe=mart_paper", storage=tmp_path).method.beta == 5.0
    assert not from_scratch(load("method=mart", storage=tmp_path))
    assert from_scratch(load("method=mart", "init=scratch", storage=tmp_path))
    # the searches built on the AFD recipe keep a validation split, the chosen epoch and bf16 on GPUs
    search = config.load([f"storage={tmp_path}"], "afd_cifar10")
    assert (search.data.val_fraction, search.train.keep, search.train.precision, search.pretrain.epochs) == \
        (0.1, "best", "auto", 100)
