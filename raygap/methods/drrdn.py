"""DRRDN, reconstructed from the paper's architecture outline: "Adversarial Robustness through
Disentangled Representations" (Yang et al., AAAI 2021). No code of the authors' is public; this is
not their method as they ran it, and its figures must be read as those of raygap's reconstruction.

From the outline: g the backbone; d_s (class-specific, robust) and d_i (class-irrelevant) disentanglers;
c_s the classifier on z_s = d_s(g(x)); c_i a discriminator that tells natural from adversarial inputs
from z_i = d_i(g(x)); r a decoder that rebuilds g(x) from (z_s, z_i). Inference: c_s(d_s(g(x))).

raygap's choices, none of them the paper's:
- d_s is a residual MLP, z_s = f + U relu(V f + a) + c, of hidden width h = `disentangler_size`, with U
  and c zero at the start, and c_s is the pre-trained classifier: the starting model computes exactly
  the pre-trained logits, as every other fine-tuning method starts from the pre-trained classifier.
- d_i is a two-layer ReLU MLP of width h; c_i is linear; r is a two-layer MLP from (z_s, z_i) to g(x).
- Losses on x and x': the mean of CE(c_s(z_s), y) over both; align_weight * ||z_s(x') - stopgrad(z_s(x))||^2
  (pulls the adversarial representation to the natural one); disc_weight * CE(c_i(z_i), natural or
  adversarial); recon_weight * ||r(z_s, z_i) - stopgrad(g(x))||^2 (the target is detached so that the
  backbone is not pulled towards features that are merely easy to rebuild). Both squared errors are
  taken relative to the target's mean square (`relative_mse`). The weights and the regime are raygap's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raygap.methods.base import Objective, register
from raygap.models import Classifier, ResidualMLP


def relative_mse(output, target):
    """||output - stopgrad(target)||^2 / ||target||^2: squared error relative to the target's scale.

    The plain squared error grows with the feature norm, which ReLU features are free to inflate; on
    digits that fed back into ever larger gradients until training diverged within three epochs.
    """
    target = target.detach().float()
    return F.mse_loss(output.float(), target) / target.pow(2).mean().clamp_min(1e-12)


class DRRDNModule(nn.Module):
    def __init__(self, model: Classifier, width: int):
        super().__init__()
        dim = model.feature_dim
        # c_s(d_s(g(x))) with the pre-trained backbone and head, d_s starting as the identity
        self.classifier = Classifier(model.backbone, dim, model.head.out_features, model.mean.flatten().tolist(),
                                     model.std.flatten().tolist(), neck=ResidualMLP(dim, width))
        self.classifier.head.load_state_dict(model.head.state_dict())
        self.irrelevant = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())  # d_i
        self.discriminator = nn.Linear(width, 2)  # c_i
        self.decoder = nn.Sequential(nn.Linear(dim + width, dim), nn.ReLU(), nn.Linear(dim, dim))  # r

    def forward(self, x, parts: bool = False):
        if not parts:
            return self.classifier(x)
        c = self.classifier
        feature = c.backbone((x - c.mean) / c.std)
        z_s, z_i = c.neck(feature), self.irrelevant(feature)
        return {"feature": feature, "z_s": z_s, "logits": c.head(z_s), "domain": self.discriminator(z_i),
                "recon": self.decoder(torch.cat([z_s, z_i], 1))}


@register
class DRRDN(Objective):
    parts = ("ce", "align", "disc", "recon")
    training_passes = 2  # natural and adversarial

    @dataclass
    class Params:
        name: str = "drrdn"
        disentangler_size: int = 128  # hidden width h of d_s, width of d_i
        align_weight: float = 1.0  # lambda_align
        disc_weight: float = 0.1
        recon_weight: float = 0.1

    non_negative = ("align_weight", "disc_weight", "recon_weight")

    @classmethod
    def check(cls, p):
        bad = super().check(p)
        if p.disentangler_size < 1:
            bad.append(("disentangler_size", f"must be >= 1, got {p.disentangler_size}"))
        return bad

    def __init__(self, model: Classifier, params: Params, attack):
        super().__init__(model, params, attack)
        self.module = DRRDNModule(model, params.disentangler_size)

    def loss(self, net, x, y, x_adv):
        p = self.params
        nat, adv = net(x, parts=True), net(x_adv, parts=True)
        ce = (F.cross_entropy(nat["logits"], y) + F.cross_entropy(adv["logits"], y)) / 2
        align = relative_mse(adv["z_s"], nat["z_s"])
        domain = torch.cat([torch.zeros_like(y), torch.ones_like(y)])
        disc = F.cross_entropy(torch.cat([nat["domain"], adv["domain"]]), domain)
        recon = (relative_mse(nat["recon"], nat["feature"]) + relative_mse(adv["recon"], adv["feature"])) / 2
        total = ce + p.align_weight * align + p.disc_weight * disc + p.recon_weight * recon
        return {"loss": total, "ce": ce, "align": align, "disc": disc, "recon": recon}

    @staticmethod
    def export(module: DRRDNModule) -> Classifier:
        return module.classifier
