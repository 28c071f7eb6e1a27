"""Prompts as data: the text a zero-shot classifier conditions on for each class of a label space.

Two sources, as in the papers' code:

- **Templates** (CLIP's prompt ensembles): a text file with one template per line, ``{}`` standing for the
  class name (``a photo of a {}.``); every class gets one prompt per template. diffclf ships the official
  Diffusion Classifier's templates per data set as presets (``diffclf/configs/prompts/<name>.txt``: ``cifar10``,
  ``pets``, ...; ``photo`` is the single ``a photo of a {}.``); any path works too.
- **Prompt files** (the official ``prompts/*.csv``): columns ``prompt, classname, classidx``, one or more rows
  per class. The class names must be the data's, in the data's order (``classidx``): a file written for another
  label set would otherwise score the wrong classes without any error.

The names compared are normalised (case, ``_``/``-``/``/`` as spaces, repeated spaces), so ``Egyptian_Mau`` in one
file matches ``egyptian mau`` in the data.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROMPT_DIR = Path(__file__).resolve().parent.parent / "configs" / "prompts"
DEFAULT_TEMPLATES = "photo"


@dataclass(frozen=True)
class Prompts:
    """The prompts of each class of a label space.

    Attributes:
        classes: the label space's class names, in label order.
        prompts: ``prompts[k]`` the prompts of class ``k`` (at least one each).
        source: where they came from (``templates:cifar10``, a file path), for records.
    """

    classes: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    source: str

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.prompts):
            raise ValueError(f"prompts {self.source}: {len(self.classes)} classes but {len(self.prompts)} prompt lists")
        empty = [c for c, p in zip(self.classes, self.prompts) if not p]
        if empty:
            raise ValueError(f"prompts {self.source}: no prompt for class(es) {', '.join(empty[:5])}")

    @property
    def flat(self) -> list[str]:
        """Every prompt, class by class (the rows of a conditioning table)."""
        return [p for group in self.prompts for p in group]

    @property
    def owners(self) -> list[int]:
        """The class of each row of :attr:`flat`."""
        return [k for k, group in enumerate(self.prompts) for _ in group]

    @property
    def per_class(self) -> int | None:
        """Prompts per class when every class has as many (templates), else None."""
        counts = {len(group) for group in self.prompts}
        return counts.pop() if len(counts) == 1 else None


def normalize_name(name: str) -> str:
    """A class name for comparison: lower case, ``_``, ``-`` and ``/`` as spaces, single spaces (the official
    prompt files write ``F/A-18`` as ``F_A-18``)."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-/]", " ", str(name)).strip().lower())


def prompt_data_path(spec: str, folder: Path, option: str) -> Path:
    """The file a preset name (a ``.txt`` in ``folder``) or a path stands for, or one line naming ``option``."""
    path = Path(spec)
    if path.suffix or "/" in spec:
        if not path.is_file():
            raise FileNotFoundError(f"{option} {spec}: no such file")
        return path
    preset = folder / f"{spec}.txt"
    if not preset.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.txt")))
        where = preset.relative_to(PROMPT_DIR.parent.parent)
        raise FileNotFoundError(f"{option} {spec}: no preset {where.as_posix().removeprefix('diffclf/')}; known: {known}")
    return preset


def templates_path(spec: str) -> Path:
    """The template file a preset name (``cifar10``) or a path stands for."""
    return prompt_data_path(spec, PROMPT_DIR, "model.init_args.templates")


def read_templates(spec: str) -> list[str]:
    """Templates of a file: non-empty lines not starting with ``#``, each with exactly one ``{}``, sorted."""
    path = templates_path(spec)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    templates = [line for line in lines if line and not line.startswith("#")]
    if not templates:
        raise ValueError(f"templates file {path}: no templates (one per line, {{}} for the class name)")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"templates file {path}: each template needs exactly one {{}} for the class name, got {bad[0]!r}")
    # A canonical order (sorted, without repeats): results do not depend on how the file lists them, and
    # template j is the same template for every class (draws cycling through templates stay paired).
    return sorted(set(templates))


def from_templates(classes: Sequence[str], spec: str) -> Prompts:
    """One prompt per (class, template)."""
    templates = read_templates(spec)
    return Prompts(tuple(classes), tuple(tuple(t.format(c) for t in templates) for c in classes), f"templates:{spec}")


def read_prompt_file(path: str | Path, classes: Sequence[str]) -> Prompts:
    """An official-format CSV (``prompt,classname,classidx``) checked against the data's class names; a class's
    prompts are sorted, so the order of the rows does not matter."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_args.prompt_file {path}: no such file")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"prompt", "classname", "classidx"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"prompt file {path}: missing column(s) {', '.join(sorted(missing))}; "
                             "expected prompt,classname,classidx (the official prompts/*.csv)")
        rows = list(reader)
    K = len(classes)
    groups: list[list[str]] = [[] for _ in range(K)]
    names: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        try:
            k = int(row["classidx"])
        except ValueError:
            raise ValueError(f"prompt file {path} line {line}: classidx {row['classidx']!r} is not an integer") from None
        if not 0 <= k < K:
            raise ValueError(f"prompt file {path} line {line}: classidx {k} outside the data's {K} classes")
        if k in names and normalize_name(names[k]) != normalize_name(row["classname"]):
            raise ValueError(f"prompt file {path} line {line}: class {k} named both {names[k]!r} and {row['classname']!r}")
        names[k] = row["classname"]
        groups[k].append(row["prompt"])
    absent = [classes[k] for k in range(K) if k not in names]
    differ = [(k, names[k], classes[k]) for k in names if normalize_name(names[k]) != normalize_name(classes[k])]
    if absent or differ:
        what = (f"no prompt for {len(absent)} class(es) ({', '.join(absent[:3])})" if absent else
                f"{len(differ)} class name(s) differ, e.g. classidx {differ[0][0]} is {differ[0][1]!r} in the file "
                f"but {differ[0][2]!r} in the data")
        raise ValueError(f"prompt file {path}: its classes differ from the data's: {what}")
    return Prompts(tuple(classes), tuple(tuple(sorted(g)) for g in groups), str(path))


def build_prompts(classes: Sequence[str], templates: str | None = None, prompt_file: str | None = None) -> Prompts:
    """The prompts of a run: a prompt file, else templates (a preset name or a path; default ``photo``)."""
    if prompt_file is not None and templates is not None:
        raise ValueError("give model.init_args.templates or model.init_args.prompt_file, not both")
    if prompt_file is not None:
        return read_prompt_file(prompt_file, classes)
    return from_templates(classes, templates or DEFAULT_TEMPLATES)


def dataset_templates(dataset: str | None) -> str:
    """The template preset of a data set name (``cifar10``), or the default when none is shipped."""
    if dataset and (PROMPT_DIR / f"{dataset}.txt").is_file():
        return dataset
    return DEFAULT_TEMPLATES


def names_path(spec: str) -> Path:
    """The class-names file a preset name (``imagenet_clip``) or a path stands for."""
    return prompt_data_path(spec, PROMPT_DIR / "names", "model.init_args.class_names")


def read_class_names(spec: str, model_classes: Sequence[Sequence[int]], num_model_classes: int) -> tuple[str, ...]:
    """Prompt names for a label space from a names file: one line per label-space class, or one per model class
    (ImageNet's 1000, so that ImageNet-A's 200 classes take their own lines of the same file).

    Args:
        spec: a preset name (``configs/prompts/names/<name>.txt``) or a path.
        model_classes: the model ids of each label-space class.
        num_model_classes: how many model classes the label space is defined over.
    """
    path = names_path(spec)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [line for line in lines if line and not line.startswith("#")]
    if len(names) == len(model_classes):
        return tuple(names)
    if len(names) == num_model_classes and all(len(ids) == 1 for ids in model_classes):
        return tuple(names[ids[0]] for ids in model_classes)
    raise ValueError(f"class names file {path}: {len(names)} names, but the data has {len(model_classes)} classes "
                     f"(over {num_model_classes} model classes)")
