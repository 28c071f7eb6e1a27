"""The six zero-shot benchmarks (CIFAR-10, STL-10, Pets, Flowers-102, Food-101, FGVC-Aircraft), each read
from a miniature copy in its real layout and file formats.

Every image's colour encodes its label (:func:`colour`), so a reader that mislabels, shifts labels by
one, or pairs a label with the wrong file fails; class names are checked against the official
diffusion-classifier's prompt names; STL-10's column-major storage is checked on an asymmetric image.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR10_NAMES, write_cifar10
from PIL import Image

from diffclf.configs import CONFIG_DIR, load_preset, resolve_preset
from diffclf.data import (
    AircraftDataModule,
    Cifar10DataModule,
    ClassificationDataModule,
    Flowers102DataModule,
    Food101DataModule,
    PetsDataModule,
    Stl10DataModule,
)
from diffclf.data.base import DataSourceError
from diffclf.data.zero_shot import DATA_ROOT_ENV, ResizeCenterCrop

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 16

# Oxford-IIIT Pets breeds as its image ids spell them (cats capitalised), in class-id order 1..37.
PET_BREEDS = (
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "Bengal",
    "Birman", "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau", "english_cocker_spaniel",
    "english_setter", "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond",
    "leonberger", "Maine_Coon", "miniature_pinscher", "newfoundland", "Persian", "pomeranian", "pug",
    "Ragdoll", "Russian_Blue", "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "Siamese",
    "Sphynx", "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier",
)
# The official prompts/pets_prompts.csv classname column, classidx 0..36.
PET_NAMES = (
    "abyssinian", "american bulldog", "american pit bull terrier", "basset hound", "beagle", "bengal", "birman",
    "bombay", "boxer", "british shorthair", "chihuahua", "egyptian mau", "english cocker spaniel", "english setter",
    "german shorthaired", "great pyrenees", "havanese", "japanese chin", "keeshond", "leonberger", "maine coon",
    "miniature pinscher", "newfoundland", "persian", "pomeranian", "pug", "ragdoll", "russian blue",
    "saint bernard", "samoyed", "scottish terrier", "shiba inu", "siamese", "sphynx",
    "staffordshire bull terrier", "wheaten terrier", "yorkshire terrier",
)
# FGVC-Aircraft's data/variants.txt (= the official prompts' names, classidx 0..99).
AIRCRAFT_VARIANTS = (
    "707-320", "727-200", "737-200", "737-300", "737-400", "737-500", "737-600", "737-700", "737-800",
    "737-900", "747-100", "747-200", "747-300", "747-400", "757-200", "757-300", "767-200", "767-300",
    "767-400", "777-200", "777-300", "A300B4", "A310", "A318", "A319", "A320", "A321", "A330-200", "A330-300",
    "A340-200", "A340-300", "A340-500", "A340-600", "A380", "ATR-42", "ATR-72", "An-12", "BAE 146-200",
    "BAE 146-300", "BAE-125", "Beechcraft 1900", "Boeing 717", "C-130", "C-47", "CRJ-200", "CRJ-700",
    "CRJ-900", "Cessna 172", "Cessna 208", "Cessna 525", "Cessna 560", "Challenger 600", "DC-10", "DC-3",
    "DC-6", "DC-8", "DC-9-30", "DH-82", "DHC-1", "DHC-6", "DHC-8-100", "DHC-8-300", "DR-400", "Dornier 328",
    "E-170", "E-190", "E-195", "EMB-120", "ERJ 135", "ERJ 145", "Embraer Legacy 600", "Eurofighter Typhoon",
    "F-16A/B", "F/A-18", "Falcon 2000", "Falcon 900", "Fokker 100", "Fokker 50", "Fokker 70",
    "Global Express", "Gulfstream IV", "Gulfstream V", "Hawk T1", "Il-76", "L-1011", "MD-11", "MD-80",
    "MD-87", "MD-90", "Metroliner", "Model B200", "PA-28", "SR-20", "Saab 2000", "Saab 340", "Spitfire",
    "Tornado", "Tu-134", "Tu-154", "Yak-42",
)
# Food-101's meta/classes.txt (sorted); the official prompts use them with spaces.
FOOD_CLASSES = (
    "apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad", "beignets",
    "bibimbap", "bread_pudding", "breakfast_burrito", "bruschetta", "caesar_salad", "cannoli",
    "caprese_salad", "carrot_cake", "ceviche", "cheese_plate", "cheesecake", "chicken_curry",
    "chicken_quesadilla", "chicken_wings", "chocolate_cake", "chocolate_mousse", "churros", "clam_chowder",
    "club_sandwich", "crab_cakes", "creme_brulee", "croque_madame", "cup_cakes", "deviled_eggs", "donuts",
    "dumplings", "edamame", "eggs_benedict", "escargots", "falafel", "filet_mignon", "fish_and_chips",
    "foie_gras", "french_fries", "french_onion_soup", "french_toast", "fried_calamari", "fried_rice",
    "frozen_yogurt", "garlic_bread", "gnocchi", "greek_salad", "grilled_cheese_sandwich", "grilled_salmon",
    "guacamole", "gyoza", "hamburger", "hot_and_sour_soup", "hot_dog", "huevos_rancheros", "hummus",
    "ice_cream", "lasagna", "lobster_bisque", "lobster_roll_sandwich", "macaroni_and_cheese", "macarons",
    "miso_soup", "mussels", "nachos", "omelette", "onion_rings", "oysters", "pad_thai", "paella", "pancakes",
    "panna_cotta", "peking_duck", "pho", "pizza", "pork_chop", "poutine", "prime_rib", "pulled_pork_sandwich",
    "ramen", "ravioli", "red_velvet_cake", "risotto", "samosa", "sashimi", "scallops", "seaweed_salad",
    "shrimp_and_grits", "spaghetti_bolognese", "spaghetti_carbonara", "spring_rolls", "steak",
    "strawberry_shortcake", "sushi", "tacos", "takoyaki", "tiramisu", "tuna_tartare", "waffles",
)


# --------------------------------------------------------------------------- label colours
def colour(label: int) -> tuple[int, int, int]:
    """Class ``label`` (0..109) as a colour that survives JPEG and any resize: red and green in steps of 23."""
    return 10 + 23 * (label % 10), 10 + 23 * (label // 10), 128


def decode(image: torch.Tensor) -> int:
    """The label :func:`colour` encoded into a ``(3, S, S)`` image in [-1, 1]."""
    r, g, _ = ((image.mean(dim=(1, 2)) + 1) * 127.5).tolist()
    return round((r - 10) / 23) + 10 * round((g - 10) / 23)


def decode_cifar(image: torch.Tensor) -> int:
    """The label of a :func:`conftest.write_cifar10` image: its mean red is 25 × label + 0..4."""
    return round(float((image[0].mean() + 1) * 127.5) / 25)


def write_jpg(path: Path, label: int, size: tuple[int, int] = (20, 14)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour(label)).save(path, quality=95)
    return path


def check_split(dm: ClassificationDataModule, split: str, expected: list[int]) -> None:
    """The split's items carry ``expected`` targets in order, each image shows its target's colour, and a
    dataloader batch is ``(images (B, 3, S, S) in [-1, 1], targets, indices)``."""
    ds = getattr(dm, f"{split}_dataset")
    items = [ds[i] for i in range(len(ds))]
    assert [t for _, t, _ in items] == expected
    decoder = decode_cifar if dm.name == "cifar10" else decode
    assert [decoder(x) for x, _, _ in items] == expected
    loader = dm.predict_dataloader() if split == "predict" else getattr(dm, f"{split}_dataloader")()
    images, targets, indices = next(iter(loader))
    assert images.shape[1:] == (3, SIZE, SIZE) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert targets.dtype == torch.long and targets.tolist() == expected[: len(targets)]
    assert indices.tolist() == list(range(len(targets)))


# --------------------------------------------------------------------------- writers (real layouts)
def pickle_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """A CIFAR batch as the originals unpickle with ``encoding="bytes"``: byte-string keys, rows of CHW."""
    path.write_bytes(pickle.dumps({b"data": images.reshape(len(images), -1), b"labels": labels}, protocol=2))


def write_stl10(root: Path) -> tuple[Path, dict[str, list[int]]]:
    """``stl10_binary/`` with 3 images per class in test, 1 in train, stored column-major as the real files."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    (folder / "class_names.txt").write_text("airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n")
    rng = np.random.default_rng(0)
    labels = {}
    for split, per_class in (("train", 1), ("test", 3)):
        y = rng.permutation(np.repeat(np.arange(10), per_class))
        hwc = np.empty((len(y), 96, 96, 3), dtype=np.uint8)
        for i, label in enumerate(y):
            hwc[i] = colour(int(label))
        # Stored as [channel, column, row]: the transpose of the (row, column, channel) pixels.
        hwc.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")
        (y + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
        labels[split] = y.tolist()
    return root, labels


def write_pets(root: Path) -> tuple[Path, dict[str, list[int]]]:
    """``oxford-iiit-pet/`` with 2 test and 1 trainval image per breed, split files in a shuffled order."""
    folder = root / "oxford-iiit-pet"
    (folder / "annotations").mkdir(parents=True)
    cats = [b for b in PET_BREEDS if b[0].isupper()]
    dogs = [b for b in PET_BREEDS if b[0].islower()]
    rng = np.random.default_rng(1)
    labels = {}
    for split, file, per_class in (("train", "trainval.txt", 1), ("test", "test.txt", 2)):
        rows = [(c, n) for c in range(len(PET_BREEDS)) for n in range(per_class)]
        rows = [rows[i] for i in rng.permutation(len(rows))]
        lines = []
        for c, n in rows:
            breed = PET_BREEDS[c]
            species, breed_id = (1, cats.index(breed) + 1) if breed in cats else (2, dogs.index(breed) + 1)
            image_id = f"{breed}_{100 * (split == 'test') + n + 1}"
            write_jpg(folder / "images" / f"{image_id}.jpg", c)
            lines.append(f"{image_id} {c + 1} {species} {breed_id}")
        (folder / "annotations" / file).write_text("\n".join(lines) + "\n")
        labels[split] = [c for c, _ in rows]
    return root, labels


def write_flowers(root: Path) -> tuple[Path, dict[str, list[int]]]:
    """``flowers-102/`` with 112 images (every class at least once), 5 train, 5 val and 102 test ids, shuffled."""
    from scipy.io import savemat

    folder = root / "flowers-102"
    rng = np.random.default_rng(2)
    labels = rng.permutation(np.concatenate([np.arange(102), rng.integers(0, 102, 10)]))
    for number, label in enumerate(labels, start=1):
        write_jpg(folder / "jpg" / f"image_{number:05d}.jpg", int(label))
    ids = rng.permutation(np.arange(1, len(labels) + 1))
    setid = {"trnid": ids[:5], "valid": ids[5:10], "tstid": ids[10:]}
    # MATLAB row vectors, labels 1..102 as in the real files.
    savemat(folder / "imagelabels.mat", {"labels": (labels + 1)[None].astype(np.uint8)})
    savemat(folder / "setid.mat", {k: v[None].astype(np.uint16) for k, v in setid.items()})
    splits = dict(zip(("train", "val", "test"), setid.values()))
    return root, {s: [int(labels[i - 1]) for i in ids] for s, ids in splits.items()}


def write_food(root: Path) -> tuple[Path, dict[str, list[int]]]:
    """``food-101/`` with one test image per class (json keys shuffled) and 5 train images."""
    folder = root / "food-101"
    (folder / "meta").mkdir(parents=True)
    (folder / "meta" / "classes.txt").write_text("\n".join(FOOD_CLASSES) + "\n")
    rng = np.random.default_rng(3)
    labels = {}
    for split, classes in (("test", rng.permutation(101)), ("train", [0, 7, 63, 100, 7])):
        meta: dict[str, list[str]] = {}
        for n, c in enumerate(classes):
            rel = f"{FOOD_CLASSES[c]}/{1000 + n}"
            write_jpg(folder / "images" / f"{rel}.jpg", int(c))
            meta.setdefault(FOOD_CLASSES[c], []).append(rel)
        (folder / "meta" / f"{split}.json").write_text(json.dumps(meta))
        labels[split] = [int(c) for c in meta_order(meta)]
    return root, labels


def meta_order(meta: dict[str, list[str]]) -> list[int]:
    return [FOOD_CLASSES.index(c) for c, rels in meta.items() for _ in rels]


def write_aircraft(root: Path) -> tuple[Path, dict[str, list[int]]]:
    """``fgvc-aircraft-2013b/data/`` with one test image per variant, 4 train and 3 val images (7-digit ids)."""
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(AIRCRAFT_VARIANTS) + "\n")
    rng = np.random.default_rng(4)
    labels, next_id = {}, 1000000
    for split, variants in (("test", rng.permutation(100)), ("train", [73, 72, 74, 0]), ("val", [37, 99, 5])):
        lines = []
        for v in variants:
            image_id = f"{next_id:07d}"
            next_id += 1
            write_jpg(data / "images" / f"{image_id}.jpg", int(v), size=(30, 40))
            lines.append(f"{image_id} {AIRCRAFT_VARIANTS[v]}")
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
        labels[split] = [int(v) for v in variants]
    (data / "images_variant_trainval.txt").write_text(
        (data / "images_variant_train.txt").read_text() + (data / "images_variant_val.txt").read_text())
    return root, labels


def write_cifar(root: Path) -> tuple[Path, dict[str, list[int]]]:
    write_cifar10(root, per_class=2)
    folder = root / "cifar-10-batches-py"
    labels = {"test": pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")[b"labels"],
              "train": [y for i in range(1, 6) for y in
                        pickle.loads((folder / f"data_batch_{i}").read_bytes(), encoding="bytes")[b"labels"]]}
    return root, labels


WRITERS = {"cifar10": write_cifar, "stl10": write_stl10, "pets": write_pets, "flowers102": write_flowers,
           "food101": write_food, "aircraft": write_aircraft}
MODULES = {"cifar10": Cifar10DataModule, "stl10": Stl10DataModule, "pets": PetsDataModule,
           "flowers102": Flowers102DataModule, "food101": Food101DataModule, "aircraft": AircraftDataModule}
# A file each module needs, relative to the root, and whether it is read at construction (else at setup).
NEEDED = {"cifar10": ("cifar-10-batches-py/test_batch", False), "stl10": ("stl10_binary/test_y.bin", False),
          "pets": ("oxford-iiit-pet/annotations/test.txt", True), "flowers102": ("flowers-102/setid.mat", False),
          "food101": ("food-101/meta/classes.txt", True), "aircraft": ("fgvc-aircraft-2013b/data/variants.txt", True)}
FOLDERS = {"cifar10": "cifar-10-batches-py", "stl10": "stl10_binary", "pets": "oxford-iiit-pet",
           "flowers102": "flowers-102", "food101": "food-101", "aircraft": "fgvc-aircraft-2013b"}


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, list[int]]]]:
    """Each data set's miniature copy (written once) and its labels per split, in the files' order."""
    return {name: write(tmp_path_factory.mktemp(name)) for name, write in WRITERS.items()}


def make(name: str, root: Path, **kwargs: object) -> ClassificationDataModule:
    return MODULES[name](root=str(root), image_size=SIZE, **kwargs)


# --------------------------------------------------------------------------- every data set
@pytest.mark.parametrize("name", list(WRITERS))
def test_test_split_labels_and_images_follow_the_files(copies, name: str) -> None:
    root, labels = copies[name]
    dm = make(name, root)
    assert dm.name == name and dm.in_channels == 3 and dm.image_size == SIZE and dm.flip is False
    dm.setup("test")
    check_split(dm, "test", labels["test"])


@pytest.mark.parametrize("name", list(WRITERS))
def test_train_split_is_predictable_for_calibration(copies, name: str) -> None:
    root, labels = copies[name]
    dm = make(name, root, predict_split="train")
    dm.setup("predict")
    check_split(dm, "predict", labels["train"])


@pytest.mark.parametrize("name", list(WRITERS))
def test_root_may_be_the_data_set_folder_or_come_from_the_environment(copies, name: str, monkeypatch,
                                                                       tmp_path: Path) -> None:
    root, _ = copies[name]
    assert make(name, root / FOLDERS[name]).root == root / FOLDERS[name]
    renamed = tmp_path / "renamed"
    renamed.symlink_to(root / FOLDERS[name])
    assert make(name, renamed).root == renamed  # recognised by its files
    monkeypatch.setenv(DATA_ROOT_ENV, str(root))
    dm = MODULES[name](image_size=SIZE, eval_limit=3)
    dm.setup("test")
    assert dm.root == root / FOLDERS[name] and len(dm.test_dataset) == 3


@pytest.mark.parametrize("name", list(WRITERS))
def test_no_root_is_one_line_naming_the_option_and_layout(name: str, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    with pytest.raises(DataSourceError) as err:
        MODULES[name]()
    message = str(err.value)
    assert "\n" not in message and "--data.root" in message and DATA_ROOT_ENV in message
    assert FOLDERS[name] in message
    with pytest.raises(DataSourceError, match=f"has no {FOLDERS[name]}/ folder") as err:
        make(name, tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_missing_file_is_one_line_naming_it_and_the_layout(copies, name: str, tmp_path: Path) -> None:
    import shutil

    source, _ = copies[name]
    root = tmp_path / "copy"
    shutil.copytree(source, root)
    relative, at_init = NEEDED[name]
    (root / relative).unlink()
    with pytest.raises(DataSourceError) as err:
        make(name, root).setup("test")
    message = str(err.value)
    assert "\n" not in message and str(root / relative) in message and "expected" in message, message
    if not at_init:
        make(name, root)  # the label space alone does not need the split's files


def test_a_missing_image_stops_setup_naming_it(copies, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "pets"
    shutil.copytree(copies["pets"][0], root)
    gone = root / "oxford-iiit-pet" / "images" / "Sphynx_101.jpg"
    gone.unlink()
    with pytest.raises(DataSourceError, match="1 listed image.*Sphynx_101.jpg") as err:
        make("pets", root).setup("test")
    assert "\n" not in str(err.value)
    dm = make("pets", root, on_bad_file="skip")
    dm.setup("test")
    assert dm.skipped_images == [str(gone)] and len(dm.test_dataset) == 2 * 37 - 1


# --------------------------------------------------------------------------- class names
def test_class_names_are_the_official_prompt_names_in_label_order(copies) -> None:
    names = {name: make(name, copies[name][0]).label_space.names for name in WRITERS}
    assert names["cifar10"] == CIFAR10_NAMES
    assert names["stl10"] == ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
    assert names["pets"] == PET_NAMES  # not templates.json's cats-first order
    assert len(names["flowers102"]) == 102 and names["flowers102"][:3] == (
        "pink primrose", "hard-leaved pocket orchid", "canterbury bells")
    assert names["flowers102"][76] == "passion flower" and names["flowers102"][101] == "blackberry lily"
    assert names["food101"] == tuple(c.replace("_", " ") for c in FOOD_CLASSES)
    assert names["food101"][62] == "macaroni and cheese"
    assert names["aircraft"] == AIRCRAFT_VARIANTS
    assert names["aircraft"][72:75] == ("F-16A/B", "F/A-18", "Falcon 2000")
    for name, module_names in names.items():
        dm = make(name, copies[name][0])
        assert dm.num_model_classes == len(module_names) and dm.label_space.name == name


# --------------------------------------------------------------------------- per-data-set details
def test_stl10_reads_column_major_images(tmp_path: Path) -> None:
    root, _ = write_stl10(tmp_path)
    folder = root / "stl10_binary"
    hwc = np.zeros((1, 96, 96, 3), dtype=np.uint8)
    hwc[0, :24, :, 0] = 255  # a red band across the top: the transposed read makes it a column on the left
    hwc[0, :, :12, 1] = 255  # a green column on the left
    hwc.transpose(0, 3, 2, 1).tofile(folder / "test_X.bin")
    np.array([4], dtype=np.uint8).tofile(folder / "test_y.bin")
    dm = Stl10DataModule(root=str(root), image_size=96)
    dm.setup("test")
    image, target, _ = dm.test_dataset[0]
    assert target == 3
    pixels = ((image + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(pixels, hwc[0])


def test_cifar10_rows_are_channel_major_rows(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_class=1)
    chw = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    chw[0, 0, :8] = 255  # image 0: a red band on top
    chw[1, 2, :, :8] = 255  # image 1: a blue column on the left
    pickle_batch(tmp_path / "cifar-10-batches-py" / "test_batch", chw, [7, 2])
    dm = Cifar10DataModule(root=str(tmp_path), image_size=32)
    dm.setup("test")
    for i, (target, expected) in enumerate(zip((7, 2), chw)):
        image, label, index = dm.test_dataset[i]
        assert (label, index) == (target, i)
        assert torch.equal(((image + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(expected))


def test_the_transform_is_the_official_resize_and_center_crop() -> None:
    from torchvision import transforms as T

    official = T.Compose([T.Resize(24, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(24),
                          lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize([0.5], [0.5])])
    rng = np.random.default_rng(0)
    for size in ((57, 40), (31, 90), (24, 24), (10, 7)):
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        ours = ResizeCenterCrop(24)(img)
        assert ours.shape == (3, 24, 24)
        torch.testing.assert_close(ours, official(img), atol=1e-6, rtol=0)


def test_aircraft_banner_is_kept_unless_asked(tmp_path: Path) -> None:
    root, _ = write_aircraft(tmp_path)
    path = root / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt"
    image_id = path.read_text().split()[0]
    img = np.zeros((60, 40, 3), dtype=np.uint8)
    img[-20:] = 255  # the banner
    Image.fromarray(img).save(root / "fgvc-aircraft-2013b" / "data" / "images" / f"{image_id}.jpg", quality=95)
    bright = {}
    for crop in (False, True):
        dm = AircraftDataModule(root=str(root), image_size=SIZE, crop_banner=crop, eval_limit=1)
        dm.setup("test")
        bright[crop] = float(dm.test_dataset[0][0].amax())
    assert bright[False] > 0.9 and bright[True] < -0.9


def test_aircraft_train_split_may_be_trainval(copies) -> None:
    root, labels = copies["aircraft"]
    dm = make("aircraft", root, train_split="trainval", predict_split="train")
    dm.setup("predict")
    assert [t for _, t, _ in (dm.predict_dataset[i] for i in range(7))] == labels["train"] + labels["val"]


@pytest.mark.parametrize("name", ["flowers102", "aircraft"])
def test_a_data_set_with_a_val_split_validates_on_it(copies, name: str) -> None:
    root, labels = copies[name]
    dm = make(name, root, predict_split="val")
    assert dm.val_is_held_out
    dm.setup("predict")
    check_split(dm, "predict", labels["val"])
    dm.setup("validate")
    check_split(dm, "val", labels["val"])


@pytest.mark.parametrize("name", ["cifar10", "stl10", "pets", "food101"])
def test_without_a_val_split_validation_is_the_test_images(copies, name: str) -> None:
    root, labels = copies[name]
    dm = make(name, root, predict_split="val")
    assert not dm.val_is_held_out
    with pytest.raises(ValueError, match="validation images of .* are test images"):
        dm.setup("predict")
    dm.setup("validate")
    check_split(dm, "val", labels["test"])
    fit = make(name, root)
    fit.setup("fit")
    assert fit.val_dataset is None and len(fit.train_dataset) == len(labels["train"])


# --------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", list(WRITERS))
def test_preset_resolves_and_instantiates(copies, name: str) -> None:
    assert resolve_preset("data", name, "--data") == CONFIG_DIR / "data" / f"{name}.yaml"
    text = (CONFIG_DIR / "data" / f"{name}.yaml").read_text()
    assert text.startswith("#") and FOLDERS[name] in text and "image_size: 512" in text and "256" in text
    dm = load_preset("data", name, ClassificationDataModule, "--data",
                     {"root": str(copies[name][0]), "image_size": SIZE})
    assert type(dm) is MODULES[name] and dm.flip is False and dm.batch_size == 8
    dm.setup("test")
    assert len(dm.test_dataset) == len(copies[name][1]["test"])
