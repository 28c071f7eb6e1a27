"""ObjectNet over its 113 ImageNet-shared classes, read through ObjectNet's own mapping files.

Each ObjectNet class stands for one or several ImageNet classes (a class takes the best of them), so
its label space is many-to-one over the model's 1000 classes; the mapping comes from the
``mappings/`` folder shipped with the data set, not from a copy here. Its images carry a thin frame
that the reference evaluation crops (``border``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffclf.data.eval_sets import EvalSetDataModule
from diffclf.data.folders import BadFile, Sample, list_subfolders, preview
from diffclf.data.label_spaces import NUM_IMAGENET_CLASSES, LabelSpace
from diffclf.data.transforms import Crop

OBJECTNET_MAPPING_FILES = (
    "folder_to_objectnet_label.json",
    "objectnet_to_imagenet_1k.json",
    "pytorch_to_imagenet_2012_id.json",
    "imagenet_to_label_2012_v2",
)


@dataclass(frozen=True)
class ObjectNetClasses:
    """ObjectNet's ImageNet-shared classes (folder, label, model ids) and every image folder it knows."""

    folders: tuple[str, ...]
    names: tuple[str, ...]
    model_ids: tuple[tuple[int, ...], ...]
    all_folders: frozenset[str]


def read_objectnet_mappings(mappings_dir: str | os.PathLike) -> ObjectNetClasses:
    """ObjectNet's own ``mappings/`` → its ImageNet-shared classes and the model ids each stands for.

    ``objectnet_to_imagenet_1k.json`` maps an ObjectNet label to ImageNet class names joined by
    ``"; "``; ``imagenet_to_label_2012_v2`` is the name of ILSVRC2012 id ``i`` (0-based) on line
    ``i``; ``pytorch_to_imagenet_2012_id.json`` maps model index → that id;
    ``folder_to_objectnet_label.json`` maps an image folder to its ObjectNet label. Classes come in
    sorted folder order (as the reference evaluations).
    """
    mdir = Path(mappings_dir)
    missing = [f for f in OBJECTNET_MAPPING_FILES if not (mdir / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"objectnet: mapping files missing from {mdir}: {', '.join(missing)} (ObjectNet ships them in "
            "objectnet-1.0/mappings/; or pass --data.mappings_dir)"
        )

    def load_json(name: str) -> dict:
        try:
            data = json.loads((mdir / name).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"objectnet: {mdir / name} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise TypeError(f"objectnet: {mdir / name} should hold a JSON object, not {type(data).__name__}")
        return data

    folder_to_label = {str(k): str(v) for k, v in load_json(OBJECTNET_MAPPING_FILES[0]).items()}
    to_imagenet = {str(k): str(v) for k, v in load_json(OBJECTNET_MAPPING_FILES[1]).items()}
    pytorch_to_2012 = {int(k): int(v) for k, v in load_json(OBJECTNET_MAPPING_FILES[2]).items()}
    label_lines = (mdir / OBJECTNET_MAPPING_FILES[3]).read_text(encoding="utf-8").splitlines()
    label_lines = [line.strip() for line in label_lines if line.strip()]
    if sorted(pytorch_to_2012) != list(range(NUM_IMAGENET_CLASSES)) or sorted(pytorch_to_2012.values()) != list(
        range(NUM_IMAGENET_CLASSES)
    ):
        raise ValueError(f"objectnet: {mdir / OBJECTNET_MAPPING_FILES[2]} is not a one-to-one map of 0..999")
    if len(label_lines) != NUM_IMAGENET_CLASSES:
        raise ValueError(f"objectnet: {mdir / OBJECTNET_MAPPING_FILES[3]} has {len(label_lines)} names, not 1000")
    id2012_to_model = {v: k for k, v in pytorch_to_2012.items()}
    name_to_model: dict[str, list[int]] = {}
    for id2012, imagenet_name in enumerate(label_lines):
        name_to_model.setdefault(imagenet_name, []).append(id2012_to_model[id2012])
    label_to_folder = {label: folder for folder, label in folder_to_label.items()}

    classes: list[tuple[str, str, tuple[int, ...]]] = []
    for label, imagenet_names in to_imagenet.items():
        if label not in label_to_folder:
            raise ValueError(f"objectnet: class '{label}' of {OBJECTNET_MAPPING_FILES[1]} has no folder in "
                             f"{OBJECTNET_MAPPING_FILES[0]}")
        ids = []
        for imagenet_name in (n.strip() for n in imagenet_names.split(";")):
            found = name_to_model.get(imagenet_name)
            if found is None or len(found) != 1:
                why = "is not" if found is None else "is ambiguous"
                raise ValueError(f"objectnet: ImageNet class '{imagenet_name}' (for '{label}') {why} in "
                                 f"{OBJECTNET_MAPPING_FILES[3]}")
            ids.append(found[0])
        classes.append((label_to_folder[label], label, tuple(sorted(set(ids)))))
    classes.sort()
    folders, names, model_ids = zip(*classes) if classes else ((), (), ())
    return ObjectNetClasses(tuple(folders), tuple(names), tuple(model_ids), frozenset(folder_to_label))


class ObjectNetDataModule(EvalSetDataModule):
    """ObjectNet over its 113 ImageNet-shared classes; each takes the best of the ImageNet classes it maps to.

    Root: ``root``, else ``$OBJECTNET_DIR`` — the ``objectnet-1.0`` folder, holding ``images/<folder>/``
    and ObjectNet's own ``mappings/`` (``folder_to_objectnet_label.json``,
    ``objectnet_to_imagenet_1k.json``, ``pytorch_to_imagenet_2012_id.json``,
    ``imagenet_to_label_2012_v2``). Images of classes with no ImageNet counterpart are left out.
    A ``border`` (default 2 px, as the reference evaluation) is cut from every edge before the crop.

    Args:
        root: the ``objectnet-1.0`` folder.
        mappings_dir: where the mapping files are (default ``root/mappings``).
        border: pixels cut from every edge first (ObjectNet's frame).
        image_size, in_channels, crop: see :class:`ImageTransform`.
        subset_file: image paths relative to ``root/images`` (a leading ``images/`` is fine), one per line.
        on_bad_file: ``error`` or ``skip`` (skipped files are listed in ``skipped_images``).
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``: see
            :class:`ClassificationDataModule` (``batch_size`` defaults to 32).
    """

    name = "objectnet"
    env_var = "OBJECTNET_DIR"
    expects = "images/<folder>/ and mappings/ (the objectnet-1.0 folder)"
    accepted_layouts = ("objectnet", "other")

    def __init__(
        self,
        root: str | None = None,
        mappings_dir: str | None = None,
        border: int = 2,
        image_size: int = 256,
        in_channels: int = 3,
        crop: Crop = "adm",
        subset_file: str | None = None,
        on_bad_file: BadFile = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(root, image_size, in_channels, crop, border, subset_file, on_bad_file, **kwargs)
        self.border = border
        self.mappings_dir = Path(mappings_dir).expanduser() if mappings_dir is not None else self.root / "mappings"
        images = self.root / "images"
        if not images.is_dir():
            raise ValueError(f"root {self.root} looks like {self.scan.looks_like()} without images/; "
                             f"{self.name} expects {self.expects}")
        mapped = read_objectnet_mappings(self.mappings_dir)
        self.label_space = LabelSpace(mapped.names, mapped.model_ids, NUM_IMAGENET_CLASSES, self.name)
        self.folder_to_target = {f: k for k, f in enumerate(mapped.folders)}
        present = list_subfolders(images)
        unknown = [f for f in present if f not in mapped.all_folders]
        if unknown:
            raise ValueError(f"objectnet: folders in {images} not in {OBJECTNET_MAPPING_FILES[0]}: {preview(unknown)}")
        if not any(f in self.folder_to_target for f in present):
            raise ValueError(f"objectnet: {images} has no folder of a class that maps to ImageNet")
        self.present = [f for f in present if f in self.folder_to_target]

    def image_root(self) -> Path:
        return self.root / "images"

    def list_samples(self) -> list[Sample]:
        return self._class_folder_samples({f: self.folder_to_target[f] for f in self.present})
