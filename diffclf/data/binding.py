"""Attribute-binding tasks on two-object scenes, as Clark & Jaini 2023 define them (App. D, after Lewis et al. 2022).

A scene holds two objects, one on the left and one on the right, each with a CLEVR shape, colour and
size. A task is binary: the model must score a true description of the image (``positive``) above a
false one (``negative``). The negative is built so that a model which only recognises which attribute
values are present cannot tell the two apart, except in the recognition controls:

- **recognition** ``X`` / control ``X|Y control``: describe one object with ``X`` (and ``Y``); the
  negative replaces its ``X`` by a value that *no* object in the scene has. Solvable by recognition alone.
- **binding** ``X|Y``: describe one object with ``X`` and ``Y``; the negative gives it the *other* object's
  ``X`` (its ``Y`` kept). Both captions name only values present in the image, so the model must bind
  ``X`` to the object that ``Y`` picks out. A scene qualifies when the objects differ in ``X`` and in
  ``Y`` (else the negative would also be true).
- **pair** ``X,Y``: describe both objects with ``X`` and ``Y``, joined by "and", leftmost first; the
  negative swaps ``X`` between them (same qualification).

Each description follows Clark & Jaini's template: "On the {position} is a " when position is described,
else "A ", then size, colour, and the shape or "object" when shape is not described (e.g. "A small red
object", "On the left is a large cube").

Scenes come from a renderer (:mod:`diffclf.data.scenes`), which describes each scene by
:class:`SceneObject` metadata; :func:`random_scenes` draws such metadata uniformly.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

SHAPES = ("cube", "sphere", "cylinder")
#: CLEVR's eight colours (Johnson et al. 2017, ``properties.json``), sorted.
COLORS = ("blue", "brown", "cyan", "gray", "green", "purple", "red", "yellow")
SIZES = ("small", "large")
POSITIONS = ("left", "right")
#: Attribute → its values. Descriptions always order the words size, colour, shape.
ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "color": COLORS, "size": SIZES, "position": POSITIONS}
DEFAULT_NUM_EXAMPLES = 1000  # Clark & Jaini: 1,000 examples per task

TaskKind = Literal["recognition", "binding", "pair"]
Scene = Sequence["SceneObject"]


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: what a renderer draws and what the descriptions name."""

    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for attribute, values in ATTRIBUTES.items():
            if getattr(self, attribute) not in values:
                raise ValueError(f"SceneObject {attribute} must be one of {', '.join(values)}, "
                                 f"got {getattr(self, attribute)!r}")


@dataclass(frozen=True)
class BindingExample:
    """One binary example: the scene it describes, its true and false description, the task's name."""

    scene_index: int
    positive: str
    negative: str
    task: str


@dataclass(frozen=True)
class BindingTask:
    """``target`` is the attribute tested (``X``), ``context`` the others described (``Y``)."""

    kind: TaskKind
    target: str
    context: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("recognition", "binding", "pair"):
            raise ValueError(f"binding task kind must be recognition, binding or pair, got {self.kind!r}")
        for a in (self.target, *self.context):
            if a not in ATTRIBUTES:
                raise ValueError(f"unknown attribute {a!r}: expected one of {', '.join(ATTRIBUTES)}")
        if self.target in self.context or len(set(self.context)) != len(self.context):
            raise ValueError(f"binding task names an attribute twice: {self.target}, {self.context}")
        if self.kind != "recognition" and not self.context:
            raise ValueError(f"a {self.kind} task needs a context attribute (X|Y or X,Y)")
        if self.kind == "recognition" and self.target == "position":
            raise ValueError("position cannot be a recognition control: a two-object scene has both positions")

    @property
    def name(self) -> str:
        """``Shape``, ``Shape|Color control``, ``Shape|Color``, ``Shape,Color`` (Clark & Jaini's Table 3 style)."""
        x, ys = self.target.capitalize(), ",".join(a.capitalize() for a in self.context)
        if self.kind == "pair":
            return f"{x},{ys}"
        if self.kind == "binding":
            return f"{x}|{ys}"
        return f"{x}|{ys} control" if ys else x

    @property
    def described(self) -> frozenset[str]:
        return frozenset((self.target, *self.context))


def parse_task(name: str) -> BindingTask:
    """The task a name stands for (inverse of :attr:`BindingTask.name`; case-insensitive)."""
    text = name.strip().lower()
    control = text.endswith(" control")
    text = text.removesuffix(" control").strip()
    if "|" in text:
        x, ys = (s.strip() for s in text.split("|", 1))
        kind: TaskKind = "recognition" if control else "binding"
        return BindingTask(kind, x, tuple(s.strip() for s in ys.split(",")))
    if control:
        raise ValueError(f"task {name!r}: a control is named 'X|Y control'")
    parts = [s.strip() for s in text.split(",")]
    if len(parts) > 1:
        return BindingTask("pair", parts[0], tuple(parts[1:]))
    return BindingTask("recognition", parts[0])


def check_scene(scene: Scene) -> tuple[SceneObject, SceneObject]:
    """The scene's objects ordered left, right; refuses anything but one object on each side."""
    objects = tuple(scene)
    if len(objects) != 2 or not all(isinstance(o, SceneObject) for o in objects):
        raise ValueError(f"a binding scene is two SceneObjects, got {len(objects)} objects")
    if {o.position for o in objects} != set(POSITIONS):
        raise ValueError(f"a binding scene has one object on the left and one on the right, got "
                         f"{[o.position for o in objects]}")
    left, right = sorted(objects, key=lambda o: POSITIONS.index(o.position))
    return left, right


def describe(obj: SceneObject, attributes: frozenset[str]) -> str:
    """Clark & Jaini's template for one object, naming only ``attributes``."""
    words = [getattr(obj, a) for a in ("size", "color") if a in attributes]
    words.append(obj.shape if "shape" in attributes else "object")
    prefix = f"On the {obj.position} is a " if "position" in attributes else "A "
    return prefix + " ".join(words)


def join_descriptions(first: str, second: str) -> str:
    """Two descriptions joined with "and" (the second lower-cased at its start: "... and a red cube")."""
    return f"{first} and {second[0].lower()}{second[1:]}"


def _values(obj: SceneObject, attributes: Sequence[str]) -> tuple[str, ...]:
    return tuple(getattr(obj, a) for a in attributes)


def absent_values(scene: Scene, attribute: str) -> tuple[str, ...]:
    """Values of ``attribute`` that no object of the scene has (the recognition controls' replacements)."""
    present = {getattr(o, attribute) for o in check_scene(scene)}
    return tuple(v for v in ATTRIBUTES[attribute] if v not in present)


def qualifies(scene: Scene, task: BindingTask) -> bool:
    """Whether ``task`` has a well-defined negative on ``scene`` (see the module docstring)."""
    left, right = check_scene(scene)
    if task.kind == "recognition":
        return bool(absent_values(scene, task.target))
    return (getattr(left, task.target) != getattr(right, task.target)
            and _values(left, task.context) != _values(right, task.context))


def make_example(scene: Scene, scene_index: int, task: BindingTask, rng: np.random.Generator) -> BindingExample:
    """One example of ``task`` on a qualifying scene; ``rng`` picks the described object and a replacement."""
    left, right = check_scene(scene)
    x, described = task.target, task.described
    if task.kind == "pair":
        swapped_left = replace(left, **{x: getattr(right, x)})
        swapped_right = replace(right, **{x: getattr(left, x)})
        positive = join_descriptions(describe(left, described), describe(right, described))
        negative = join_descriptions(describe(swapped_left, described), describe(swapped_right, described))
        return BindingExample(scene_index, positive, negative, task.name)
    subject, other = (left, right) if rng.integers(2) == 0 else (right, left)
    if task.kind == "binding":
        value = getattr(other, x)
    else:
        choices = absent_values(scene, x)
        value = choices[int(rng.integers(len(choices)))]
    return BindingExample(scene_index, describe(subject, described),
                          describe(replace(subject, **{x: value}), described), task.name)


def binding_examples(scenes: Sequence[Scene], task: BindingTask | str, num_examples: int = DEFAULT_NUM_EXAMPLES,
                     seed: int = 0) -> list[BindingExample]:
    """``num_examples`` examples of ``task``, each on a different qualifying scene, in scene order.

    Deterministic in ``(seed, task name)``: the scenes are drawn without replacement, then each
    example's described object (and a control's replacement value). Too few qualifying scenes is an
    error rather than repeats: a binomial test assumes independent examples.
    """
    if isinstance(task, str):
        task = parse_task(task)
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    eligible = [i for i, scene in enumerate(scenes) if qualifies(scene, task)]
    if len(eligible) < num_examples:
        raise ValueError(f"binding task {task.name}: {len(eligible)} of {len(scenes)} scenes qualify, "
                         f"{num_examples} examples wanted: render more scenes")
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
    chosen = sorted(int(i) for i in rng.choice(eligible, size=num_examples, replace=False))
    return [make_example(scenes[i], i, task, rng) for i in chosen]


def random_scenes(num_scenes: int, seed: int = 0) -> list[tuple[SceneObject, SceneObject]]:
    """Scene metadata with every attribute drawn uniformly and independently, left object first."""
    rng = np.random.default_rng(seed)

    def draw(position: str) -> SceneObject:
        return SceneObject(*(ATTRIBUTES[a][int(rng.integers(len(ATTRIBUTES[a])))] for a in ("shape", "color", "size")),
                           position=position)

    return [(draw("left"), draw("right")) for _ in range(num_scenes)]
