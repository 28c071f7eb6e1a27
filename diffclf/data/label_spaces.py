"""The classes an evaluation is scored over, and which model classes stand for each.

A model is trained over ``num_model_classes`` classes (ImageNet: 1000). A dataset may be scored
over a subset (ImageNet-A: 200 classes) or over classes that several model classes stand for
(ObjectNet: "chair" takes the best of ImageNet's several chairs). ``LabelSpace`` says exactly that,
so the diffusion classifier scores only the model ids it needs and a discriminative model
restricts its logits the same way. Targets in every dataloader are label-space indices.

The class metadata the label spaces are made of lives here too, so that a data set's module says how
its files are laid out and this one says what its classes are: the 1000 ImageNet-1k classes in the
standard sorted-wnid order (= torchvision / timm indices), their names and ImageNet-A's 200 indices,
all from the files timm ships in ``timm/data/_info/``; Fashion-MNIST's class names from torchvision.
ObjectNet's classes come from the mapping files shipped with the data set (:mod:`diffclf.data.objectnet`).
"""

from __future__ import annotations

import pkgutil
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

NUM_IMAGENET_CLASSES = 1000
WNID_RE = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class LabelSpace:
    """``names[k]`` is label-space class ``k``; ``model_classes[k]`` the model ids standing for it."""

    names: tuple[str, ...]
    model_classes: tuple[tuple[int, ...], ...]
    num_model_classes: int
    name: str = "labels"

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "model_classes", tuple(tuple(int(c) for c in ids) for ids in self.model_classes))
        if len(self.names) != len(self.model_classes):
            raise ValueError(
                f"label space '{self.name}': {len(self.names)} names but {len(self.model_classes)} model-class groups"
            )
        if not self.names:
            raise ValueError(f"label space '{self.name}' has no classes")
        for k, ids in enumerate(self.model_classes):
            if not ids:
                raise ValueError(f"label space '{self.name}': class {k} ({self.names[k]}) has no model class ids")
            bad = [c for c in ids if not 0 <= c < self.num_model_classes]
            if bad:
                raise ValueError(
                    f"label space '{self.name}': class {k} ({self.names[k]}) names model ids {bad} "
                    f"outside 0..{self.num_model_classes - 1}"
                )

    @property
    def num_classes(self) -> int:
        """Number of label-space classes (what a K-way accuracy is over)."""
        return len(self.names)

    def all_model_ids(self) -> list[int]:
        """Every model id any class uses, sorted and unique: the candidates a classifier scores."""
        return sorted({c for ids in self.model_classes for c in ids})

    @classmethod
    def identity(cls, names: Sequence[str], name: str = "labels") -> LabelSpace:
        """Label space = model classes, one to one (a model trained on this very dataset)."""
        return cls(tuple(names), tuple((i,) for i in range(len(names))), len(names), name)

    @classmethod
    def subset(cls, names: Sequence[str], model_ids: Sequence[int], num_model_classes: int, name: str) -> LabelSpace:
        """A subset of the model's classes, one model id each (ImageNet-A's 200 of 1000)."""
        return cls(tuple(names), tuple((int(i),) for i in model_ids), num_model_classes, name)


def group_index(model_classes: Sequence[Sequence[int]]) -> Tensor:
    """``(K, L)`` model ids per label-space class, padded by repeating the class's first id.

    Repeating an id leaves a max unchanged, so ``logits[:, index].amax(-1)`` is the best logit of
    each class's model ids in one gather.
    """
    width = max(len(ids) for ids in model_classes)
    rows = [list(ids) + [ids[0]] * (width - len(ids)) for ids in model_classes]
    return torch.tensor(rows, dtype=torch.long)


def label_space_scores(logits: Tensor, index: Tensor) -> Tensor:
    """Model-class logits ``(B, M)`` → label-space scores ``(B, K)``: each class takes its best id."""
    return logits[:, index.to(logits.device)].amax(dim=-1)


def label_space_logits(logits: Tensor, index: Tensor) -> Tensor:
    """Model-class logits ``(B, M)`` → label-space logits ``(B, K)`` of ``p(c|x)``: a class sums its ids'
    probabilities, i.e. takes the log-sum-exp of their logits (the padding of ``group_index`` counted once)."""
    index = index.to(logits.device)
    pad = torch.zeros_like(index, dtype=torch.bool)
    pad[:, 1:] = index[:, 1:] == index[:, :1]
    gathered = logits[:, index].masked_fill(pad, -torch.inf)
    return torch.logsumexp(gathered, dim=-1)


# ---------------------------------------------------------------------- ImageNet (timm's files)
def _timm_info(filename: str) -> list[str]:
    data = pkgutil.get_data("timm.data", f"_info/{filename}")
    if data is None:
        raise FileNotFoundError(f"timm does not ship timm/data/_info/{filename}")
    return [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in model-index order (sorted, as torchvision and timm)."""
    wnids = tuple(_timm_info("imagenet_synsets.txt"))
    if len(wnids) != NUM_IMAGENET_CLASSES or list(wnids) != sorted(wnids):
        raise RuntimeError("timm's imagenet_synsets.txt is not the 1000 sorted ImageNet-1k wnids")
    return wnids


@cache
def imagenet_wnid_to_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(imagenet_wnids())}


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """Short class names (the first WordNet lemma, e.g. ``tench``), in model-index order."""
    lemmas = dict(line.split("\t", 1) for line in _timm_info("imagenet_synset_to_lemma.txt"))
    return tuple(lemmas[w].split(",")[0].strip() for w in imagenet_wnids())


@cache
def imagenet_a_indices() -> tuple[int, ...]:
    """The 200 ImageNet indices of ImageNet-A's classes, in timm's ``imagenet_a_indices.txt`` order."""
    indices = tuple(int(x) for x in _timm_info("imagenet_a_indices.txt"))
    if len(indices) != 200 or len(set(indices)) != 200:
        raise RuntimeError("timm's imagenet_a_indices.txt does not list 200 distinct classes")
    return indices


def imagenet_label_space(name: str) -> LabelSpace:
    """All 1000 ImageNet classes, one to one (ImageNet, ImageNet-V2)."""
    return LabelSpace.identity(imagenet_class_names(), name=name)


def imagenet_a_label_space(name: str) -> LabelSpace:
    """ImageNet-A's 200 classes of a 1000-class model: class ``k`` is ``imagenet_a_indices()[k]``."""
    indices = imagenet_a_indices()
    names = imagenet_class_names()
    return LabelSpace.subset([names[i] for i in indices], indices, NUM_IMAGENET_CLASSES, name)


# ---------------------------------------------------------------------- Fashion-MNIST
def fashion_mnist_label_space() -> LabelSpace:
    """torchvision's Fashion-MNIST class names, one model class each (shared by the shifted test sets)."""
    from torchvision.datasets import FashionMNIST

    return LabelSpace.identity(FashionMNIST.classes, name="fashion_mnist")
