"""``diffclf build-fonts``: letters from real fonts, split by font, the same bytes in every process.

Builds use the DejaVu fonts (``fonts-dejavu-core``: on every Debian/Ubuntu machine) with a few letters and
small sizes, so the whole file runs in seconds after the import of diffclf.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from diffclf.cli import main
from diffclf.cli.build_fonts import build_fonts
from diffclf.cli.presets import rewrite_aliases
from diffclf.configs import CONFIG_DIR, load_preset
from diffclf.data import fonts as fo
from diffclf.data.folders import ImageFolderDataModule

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
ARGS = {"letters": "ABK", "size": 16, "per_font": 2, "test_fraction": 0.25, "seed": 0, "font_dir": str(DEJAVU)}


def _usable() -> list[fo.Font]:
    return fo.usable_fonts(fo.find_fonts([str(DEJAVU)]), "ABK", 64)[0] if DEJAVU.is_dir() else []


USABLE = _usable()
pytestmark = pytest.mark.skipif(len(USABLE) < 2, reason=f"fewer than 2 usable fonts in {DEJAVU} (fonts-dejavu-core)")


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def meta(root: Path) -> dict:
    return json.loads((root / "fonts.json").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(build_fonts(str(tmp_path_factory.mktemp("fonts") / "out"), **ARGS))


def test_split_is_by_font_and_every_letter_has_per_font_images_of_every_font(built: Path) -> None:
    """Mutation tried: splitting images (not fonts) into train/test puts font names in both splits: fails;
    splitting fonts ignoring their family puts a family on both sides: fails."""
    m = meta(built)
    train, test = {f["name"] for f in m["train_fonts"]}, {f["name"] for f in m["test_fonts"]}
    assert train and test and not train & test and len(train | test) == len(USABLE)
    # Whole families on one side: the bold of a training font is not an unseen test font.
    fam = lambda fonts: {f["family"] for f in fonts}
    assert fam(m["train_fonts"]) and fam(m["test_fonts"]) and not fam(m["train_fonts"]) & fam(m["test_fonts"])
    for split, names in (("train", train), ("test", test)):
        assert sorted(p.name for p in (built / split).iterdir()) == list("ABK")
        for letter in "ABK":
            found = sorted(p.name for p in (built / split / letter).iterdir())
            assert found == sorted(f"{n}_{v}.png" for n in names for v in range(ARGS["per_font"]))
        assert m["counts"][split] == 3 * len(names) * ARGS["per_font"]
    with Image.open(built / "test" / "A" / f"{min(test)}_0.png") as img:
        assert img.mode == "L" and img.size == (16, 16)
    assert m["command"] == (f"diffclf build-fonts --out {built} --letters ABK --size 16 --per_font 2 "
                            f"--test_fraction 0.25 --seed 0 --font_dir '[\"{DEJAVU}\"]'")
    assert m["command"] in (built / "README.md").read_text()


def test_the_cli_rebuilds_the_same_bytes_and_so_does_a_fresh_process(built: Path, tmp_path: Path) -> None:
    """A build through ``diffclf build-fonts`` and one in a subprocess (another ``hash()`` salt) equal the
    fixture's byte for byte. Mutation tried: seeding the jitter with ``hash((seed, name, letter, variant))``
    fails the subprocess comparison."""
    again = tmp_path / "again"
    main(["build-fonts", "--out", str(again), "--letters", "ABK", "--size", "16", "--per_font", "2",
          "--font_dir", str(DEJAVU)])
    mine, theirs = files(built), files(again)
    mine.pop("fonts.json"), mine.pop("README.md"), theirs.pop("fonts.json"), theirs.pop("README.md")
    assert mine == theirs and len(mine) == sum(meta(built)["counts"].values())
    assert {k: v for k, v in meta(again).items() if k not in ("out", "command")} == \
        {k: v for k, v in meta(built).items() if k not in ("out", "command")}
    # The two modules alone, under stand-in packages: no Lightning import, so the subprocess takes a second.
    script = (
        "import sys, types\n"
        f"root = {str(REPO / 'diffclf')!r}\n"
        "for name, sub in (('diffclf', ''), ('diffclf.data', '/data'), ('diffclf.cli', '/cli')):\n"
        "    sys.modules[name] = types.ModuleType(name); sys.modules[name].__path__ = [root + sub]\n"
        "from diffclf.cli.build_fonts import build_fonts\n"
        f"build_fonts(sys.argv[1], **{ARGS!r})\n"
    )
    fresh = tmp_path / "fresh"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(fresh)], check=True, env=env, capture_output=True, timeout=120)
    assert files(fresh) == {**files(built), **{k: files(fresh)[k] for k in ("fonts.json", "README.md")}}
    assert {k: v for k, v in meta(fresh).items() if k not in ("out", "command")} == \
        {k: v for k, v in meta(built).items() if k not in ("out", "command")}


def test_render_letter_fills_55_to_85_percent_stays_in_the_canvas_and_varies() -> None:
    """Mutation tried: the scale drawn from (0.55, 0.85) ignored (a fixed 0.7) fails the spread check."""
    path = USABLE[0].path
    sides, images = [], []
    for variant in range(24):
        image = fo.render_letter(path, "H", 32, variant, 0)
        assert image.dtype == np.uint8 and image.shape == (32, 32)
        assert image[0].max() == image[-1].max() == image[:, 0].max() == image[:, -1].max() == 0  # dark, uncut
        ys, xs = np.nonzero(image > 96)
        sides.append(max(np.ptp(ys), np.ptp(xs)) + 1)
        images.append(image.tobytes())
    assert 0.5 * 32 <= min(sides) < 0.62 * 32 and 0.78 * 32 < max(sides) <= 0.88 * 32, sides
    assert len(set(images)) == len(images)
    assert fo.render_letter(path, "H", 32, 3, 0).tobytes() == images[3]
    assert fo.render_letter(path, "H", 32, 3, 1).tobytes() != images[3]
    assert 0 < np.count_nonzero((image > 0) & (image < 255))  # anti-aliased edges


def test_a_font_lacking_a_letter_is_dropped_for_its_tofu_box() -> None:
    """DejaVu has no CJK: U+4E2D draws its .notdef box (ink, so a mere non-empty check would keep it).
    Mutation tried: comparing against the tofu masks removed keeps every font: fails."""
    paths = [f.path for f in USABLE]
    kept, dropped = fo.usable_fonts(paths, "A\u4e2d", 64)
    assert kept == [] and set(dropped) == {str(p) for p in paths}
    assert all("tofu" in why and "\u4e2d" in why for why in dropped.values())
    kept, dropped = fo.usable_fonts(paths, "AZ", 64)
    assert [f.path for f in kept] == paths and dropped == {}


def test_the_same_design_in_two_files_is_kept_once(tmp_path: Path) -> None:
    """Mutation tried: no pixel-identical check keeps both copies (the font would sit in both splits): fails."""
    sans, other = USABLE[0].path, USABLE[1].path
    for name, src in (("a_copy.ttf", sans), ("b_other.ttf", other), ("c_copy.ttf", sans)):
        shutil.copy(src, tmp_path / name)
    (tmp_path / "d_broken.otf").write_bytes(b"not a font")
    kept, dropped = fo.usable_fonts(fo.find_fonts([str(tmp_path)]), "ABK", 64)
    assert [f.name for f in kept] == ["a_copy", "b_other"]
    assert dropped.pop(str(tmp_path / "d_broken.otf")).startswith("unreadable: OSError")
    assert dropped == {str(tmp_path / "c_copy.ttf"): "duplicate of a_copy (pixel-identical letters)"}


def test_the_folder_reads_as_a_grey_class_tree_and_through_the_preset(built: Path) -> None:
    m = meta(built)
    dm = ImageFolderDataModule(root=str(built / "train"), test_root=str(built / "test"), in_channels=1,
                               image_size=16, flip=False, batch_size=4)
    assert dm.classes == list("ABK") and dm.num_model_classes == 3
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.test_dataset)) == (m["counts"]["train"], m["counts"]["test"])
    image, target, _ = dm.test_dataset[len(dm.test_dataset) - 1]
    assert image.shape == (1, 16, 16) and target == 2
    assert image.min() == -1 and image.max() > 0.5 and image.mean() < 0  # dark background, a light glyph
    assert rewrite_aliases(["--data", "fonts"])[-1] == str(CONFIG_DIR / "data" / "fonts.yaml")
    from lightning.pytorch import LightningDataModule

    preset = load_preset("data", "fonts", LightningDataModule, "--data",
                         {"root": built / "train", "test_root": built / "test", "image_size": 16})
    assert isinstance(preset, ImageFolderDataModule) and preset.name == "fonts"
    assert (preset.in_channels, preset.flip, preset.classes) == (1, False, list("ABK"))


@pytest.mark.parametrize(("changes", "message"), [
    ({"letters": ""}, "--letters is empty"),
    ({"letters": "AbB"}, r"'Bb' repeated \(case-insensitively"),
    ({"letters": "A B"}, "' ' cannot name a class folder"),
    ({"size": 7}, "--size must be >= 8, got 7"),
    ({"per_font": 0}, "--per_font must be >= 1, got 0"),
    ({"test_fraction": 1.0}, r"--test_fraction must lie in \(0, 1\), got 1.0"),
    ({"font_dir": "EMPTY"}, "no .ttf/.otf/.ttc fonts found in"),
    ({"letters": "A\u4e2d"}, "0 of the .* fonts in .* draw every letter of 'A\u4e2d'; need at least 2"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, changes: dict, message: str) -> None:
    (tmp_path / "empty").mkdir()
    args = {**ARGS, **{k: str(tmp_path / "empty") if v == "EMPTY" else v for k, v in changes.items()}}
    with pytest.raises(SystemExit, match=message) as info:
        build_fonts(str(tmp_path / "out"), **args)
    assert str(info.value).startswith("error: ") and "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_a_smaller_rebuild_leaves_no_stale_files_and_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_fonts(str(out), **ARGS)
    build_fonts(str(out), **{**ARGS, "letters": "AB", "per_font": 1})
    assert sorted(p.name for p in (out / "train").iterdir()) == ["A", "B"]
    assert all(p.name.endswith("_0.png") for p in out.rglob("*.png"))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="neither empty nor an earlier build-fonts folder"):
        build_fonts(str(tmp_path / "foreign"), **ARGS)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
