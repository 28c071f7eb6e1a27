"""The classes an evaluation is scored over, and which model classes stand for each.

A model is trained over ``num_model_classes`` classes (ImageNet: 1000). A dataset may be scored
over a subset (ImageNet-A: 200 classes) or over classes that several model classes stand for
(ObjectNet: "chair" takes the best of ImageNet's several chairs). ``LabelSpace`` says exactly that,
so the diffusion classifier scores only the model ids it needs and a discriminative model
restricts its logits the same way. Targets in every dataloader are label-space indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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
