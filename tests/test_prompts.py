"""Prompts as data (diffclf.models.prompts) and the text-embedding cache (diffclf.models.text_cache)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffclf.models.prompts import (
    build_prompts,
    dataset_templates,
    read_class_names,
    read_prompt_file,
    read_templates,
)
from diffclf.models.text_cache import cached_embeddings, files_fingerprint


def test_shipped_templates_are_the_official_ones() -> None:
    cifar = read_templates("cifar10")
    assert len(cifar) == 18 and "a photo of a {}." in cifar and cifar == sorted(cifar)
    assert read_templates("pets") == ["a photo of a {}, a type of pet."]
    assert dataset_templates("cifar10") == "cifar10" and dataset_templates("my_folder") == "photo"
    with pytest.raises(FileNotFoundError, match=r"no preset configs/prompts/nope.txt; known: aircraft, cifar10"):
        read_templates("nope")


def test_templates_file_order_and_repeats_do_not_matter(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("# comment\na photo of a {}.\n\nitap of a {}.\na photo of a {}.\n")
    (tmp_path / "b.txt").write_text("itap of a {}.\na photo of a {}.\n")
    a = build_prompts(["cat", "dog"], str(tmp_path / "a.txt"))
    b = build_prompts(["cat", "dog"], str(tmp_path / "b.txt"))
    assert a.prompts == b.prompts == (("a photo of a cat.", "itap of a cat."), ("a photo of a dog.", "itap of a dog."))
    assert a.per_class == 2 and a.owners == [0, 0, 1, 1]
    (tmp_path / "bad.txt").write_text("a photo of a cat.\n")
    with pytest.raises(ValueError, match=r"exactly one \{\} for the class name"):
        read_templates(str(tmp_path / "bad.txt"))


def write_csv(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    import csv

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "classname", "classidx"])
        w.writerows(rows)
    return path


def test_official_prompt_files_are_checked_against_the_data(tmp_path: Path) -> None:
    classes = ["Egyptian Mau", "F/A-18", "cat"]
    ok = write_csv(tmp_path / "ok.csv", [("a photo of a F/A-18.", "F_A-18", 1), ("an egyptian mau.", "egyptian_mau", 0),
                                          ("a cat.", "cat", 2), ("another cat.", "cat", 2)])
    p = read_prompt_file(ok, classes)
    assert p.prompts == (("an egyptian mau.",), ("a photo of a F/A-18.",), ("a cat.", "another cat.")) and p.per_class is None
    with pytest.raises(ValueError, match=r"no prompt for 1 class\(es\) \(cat\)"):
        read_prompt_file(write_csv(tmp_path / "a.csv", [("x", "egyptian mau", 0), ("y", "F/A-18", 1)]), classes)
    with pytest.raises(ValueError, match=r"line 2: classidx 3 outside the data's 3 classes"):
        read_prompt_file(write_csv(tmp_path / "b.csv", [("x", "dog", 3)]), classes)
    with pytest.raises(ValueError, match=r"missing column\(s\) classidx"):
        (tmp_path / "c.csv").write_text("prompt,classname\nx,cat\n")
        read_prompt_file(tmp_path / "c.csv", classes)
    with pytest.raises(ValueError, match="not both"):
        build_prompts(classes, "photo", str(ok))


def test_class_names_files_cover_the_label_space_or_the_model_classes(tmp_path: Path) -> None:
    names = read_class_names("imagenet_clip", [(0,), (1,), (999,)], 1000)
    assert names == ("tench", "goldfish", "toilet paper")
    (tmp_path / "n.txt").write_text("a\nb\n")
    assert read_class_names(str(tmp_path / "n.txt"), [(5,), (7,)], 10) == ("a", "b")
    with pytest.raises(ValueError, match="2 names, but the data has 3 classes"):
        read_class_names(str(tmp_path / "n.txt"), [(0,), (1,), (2,)], 10)


def test_the_cache_reads_back_what_it_wrote_and_refuses_other_prompts(tmp_path: Path) -> None:
    calls = []

    def compute() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"hidden": torch.arange(6.0).view(2, 3)}

    key = {"kind": "test", "prompts": ["a", "b"], "fingerprint": "f1"}
    first, hit1 = cached_embeddings(tmp_path / "c.st", key, compute)
    second, hit2 = cached_embeddings(tmp_path / "c.st", key, compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1) and torch.equal(first["hidden"], second["hidden"])
    with pytest.raises(ValueError, match="holds embeddings of other prompts"):
        cached_embeddings(tmp_path / "c.st", {**key, "prompts": ["a", "c"]}, compute)
    with pytest.raises(ValueError, match="another text encoder or tokenizer"):
        cached_embeddings(tmp_path / "c.st", {**key, "fingerprint": "f2"}, compute)


def test_the_fingerprint_follows_file_contents(tmp_path: Path) -> None:
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "w.bin").write_bytes(b"\0" * 10)
    before = files_fingerprint([tmp_path / "enc"])
    (tmp_path / "enc" / "w.bin").write_bytes(b"\0" * 9 + b"\1")
    assert files_fingerprint([tmp_path / "enc"]) != before
