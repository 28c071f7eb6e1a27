"""The hybrid objective: cross-entropy on the shared-noise ELBO logits, added to the eps loss.

A class-conditional denoiser trained on the eps loss alone learns ``p(x|c)`` and only indirectly the
differences between classes that the classifier reads; on short budgets those differences are not yet
learned (the class table is a tiny part of the gradient). The Bayes classifier's own logits for an
image are ``-err_c`` on draws shared by every class (Li et al. 2023, eq. 3, one draw), so a
cross-entropy on them trains exactly the quantity the classifier ranks by, while the eps loss keeps the
model generative: the principled generative-discriminative hybrid of Lasserre, Bishop & Minka (CVPR
2006), here with the classifier being the generative model itself, not a second head.

Costs ``M * J`` denoiser forwards per step for ``M`` images and ``J`` candidate classes; ``J < K`` (the
true class and ``J - 1`` others at random) is a sampled softmax: a cheaper, biased stand-in for the
``K``-way cross-entropy when ``K`` is large.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# (x_t, t, y) -> eps prediction with the input's channels (learned-sigma channels already dropped).
Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]


def hybrid_candidates(labels: Tensor, num_classes: int, per_image: int | None, generator: torch.Generator) -> Tensor:
    """Candidate classes ``(M, J)`` of each image: its own label in column 0, then ``J - 1`` distinct other
    classes drawn at random (all ``K - 1`` others, in random order, when ``per_image`` is None or >= K)."""
    m = labels.shape[0]
    j = num_classes if per_image is None else min(per_image, num_classes)
    if j < 2:
        raise ValueError(f"model.hybrid_classes must be at least 2 (the true class and one other), got {per_image}")
    u = torch.rand(m, num_classes, generator=generator, device=generator.device).to(labels.device)
    u[torch.arange(m, device=labels.device), labels] = 2.0  # the own label sorts last: never an "other"
    others = u.argsort(dim=1)[:, : j - 1]
    return torch.cat([labels[:, None], others], dim=1)


def caption_candidates(captions: Tensor, true_sets: Sequence[Collection[int]], pool: Tensor, per_image: int,
                       generator: torch.Generator) -> Tensor:
    """Candidate captions ``(M, J)``: image ``m``'s own caption ``captions[m]`` in column 0, then ``J - 1``
    distinct captions of ``pool`` (the batch's) drawn at random among those *not* in ``true_sets[m]``.

    Free captions have no class structure: another image's caption may describe this image too ("a cube"
    of two scenes with a cube), and a softmax that pushed it down would teach the model to ignore a true
    word. ``true_sets[m]`` (every caption the data holds true of image ``m``) keeps such captions out, so
    every negative is false of its image: CLIP's in-batch negatives (Radford et al. 2021), with the false
    negatives a small caption set repeats removed. ``generator`` is a CPU generator (the choice is index
    bookkeeping, the same on every device).
    """
    m = captions.shape[0]
    if per_image < 2:
        raise ValueError(f"model.hybrid_captions must be at least 2 (the own caption and one other), got {per_image}")
    if len(true_sets) != m:
        raise ValueError(f"{len(true_sets)} caption sets for {m} images")
    distinct = torch.unique(pool.cpu()).tolist()
    rows = []
    for own, true in zip(captions.cpu().tolist(), true_sets):
        if own not in true:
            raise ValueError(f"caption {own} is not among its image's true captions: the data's caption sets and "
                             "batches disagree")
        negatives = [c for c in distinct if c not in true]
        if len(negatives) < per_image - 1:
            raise ValueError(f"a batch has {len(negatives)} captions false of one of its images, fewer than "
                             f"model.hybrid_captions - 1 = {per_image - 1}: lower hybrid_captions or raise the batch size")
        pick = torch.randperm(len(negatives), generator=generator)[: per_image - 1].tolist()
        rows.append([own] + [negatives[i] for i in pick])
    return torch.tensor(rows, dtype=torch.long, device=captions.device)


def elbo_cross_entropy(
    denoise: Denoiser, x_t: Tensor, t: Tensor, noise: Tensor, candidates: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the true class (column 0 of ``candidates``) under ``softmax(-err / temperature)``.

    ``err[m, j] = ||noise_m - eps(x_t_m, t_m, candidates[m, j])||^2`` summed over the image's dimensions: every
    candidate of an image sees the same ``(t, eps)`` (the paired comparison of scoring), so only the class
    term differs between logits. Summed, not averaged, so that ``temperature = 1`` is the unit-variance
    Gaussian log-likelihood of the noise (times 2) and the logits' scale does not shrink with image size.
    Returns the batch-mean loss and ``err`` ``(M, J)`` (for logging the hybrid's accuracy).
    """
    if temperature <= 0:
        raise ValueError(f"model.hybrid_temperature must be > 0, got {temperature}")
    m, j = candidates.shape
    rep = lambda a: a.repeat_interleave(j, dim=0)
    eps = denoise(rep(x_t), rep(t), candidates.reshape(-1))
    target = rep(noise)
    err = (eps.float() - target.float()).pow(2).flatten(1).sum(dim=1).view(m, j)
    zeros = torch.zeros(m, dtype=torch.long, device=err.device)
    return F.cross_entropy(-err / temperature, zeros), err
