"""The paper configs on the ImageNet family: every ``--data`` preset runs against a miniature layout of
its real data set and is scored over its own label space only.

The DiT (saved in facebookresearch's ``.pt`` format, 1000 classes, learned sigma) and the timm
resnet18 weights are built so that the model ranks its 1000 classes in a known order, whatever the
image: model class 999 (toilet tissue) best, then 315 (ImageNet-A's 58th class), 530 (digital
clock, in ImageNet-A and ObjectNet's "Alarm clock"), 954 (banana), then all others tied. So each
preset's prediction is known without running the code under test: 1000-way sets predict 999;
ImageNet-A and ImageNet-200 must predict their class 57 (999 is not among their 200); ObjectNet must
predict "Alarm clock", which takes the best of its ImageNet classes (409, 530) and so beats Banana
(954). The predicted class has 3 images and every other class fewer (and is not label-space class 0,
where ties would land, except on ObjectNet), so ``correct == 3`` checks targets, label space and the
best-of-ids rule together.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_folders import write_class_tree, write_image, write_objectnet

from diffclf.cli import main
from diffclf.data.label_spaces import imagenet_a_indices, imagenet_wnids
from diffclf.models.dit import DiT

diffusers = pytest.importorskip("diffusers")
timm = pytest.importorskip("timm")

REPO = Path(__file__).resolve().parents[1]
SIZE, LATENT, TRIALS = 16, 8, 2
# Model class → rank signal (smaller = preferred); every other class gets RANK_REST.
RANKS = {999: 0.0, 315: 0.5, 530: 1.0, 954: 1.5}
RANK_REST = 3.0
A = imagenet_a_indices()
WNID = imagenet_wnids()
assert A[57] == 315 and 999 not in A and 530 in A and 954 in A and 409 not in A


pytestmark = pytest.mark.usefixtures("one_thread")


# preset → (class folders with their image counts, images scored, images of the predicted class)
LAYOUTS: dict[str, tuple[dict[str, int], int, int]] = {
    "imagenet": ({WNID[0]: 1, WNID[315]: 2, WNID[999]: 3}, 6, 3),
    "imagenet_v2": ({"0": 1, "315": 2, "999": 3}, 6, 3),
    "imagenet_a": ({WNID[A[0]]: 1, WNID[A[57]]: 3, WNID[A[199]]: 2}, 6, 3),
    # ImageNet validation restricted to ImageNet-A's classes: class 999's 2 images are not scored.
    "imagenet_200": ({WNID[999]: 2, WNID[A[57]]: 3, WNID[A[0]]: 1}, 4, 3),
    # alarm_clock 2 + 1 extra, banana 2; squeegee (2 images) maps to no ImageNet class.
    "objectnet": ({}, 5, 3),
}
SPACE = {"imagenet": 1000, "imagenet_v2": 1000, "imagenet_a": 200, "imagenet_200": 200, "objectnet": 2}
MODEL_IDS = {"objectnet": 3}  # Alarm clock = {409, 530}, Banana = {954}: 3 model classes are scored


def write_layout(root: Path, preset: str) -> Path:
    if preset == "objectnet":
        write_objectnet(root)
        write_image(root / "images" / "alarm_clock" / "extra.png", "RGB", size=(24, 24))
        return root
    folders, _, _ = LAYOUTS[preset]
    write_class_tree(root, list(folders), per_class=1)
    for folder, count in folders.items():
        for k in range(1, count):
            write_image(root / folder / f"extra{k}.JPEG", "RGB")
    return root


def rigged_dit() -> DiT:
    """A DiT whose eps error ranks classes by RANKS for any input.

    Blocks are identity (adaLN-Zero init), the timestep embedding is zero, class ``c`` embeds as
    ``r_c * 1``; the final layer's shift is ``alpha * silu(r_c) * 1`` and its output a fixed random
    map of it, so the predicted eps is ``silu(r_c) * d`` plus a negligible image term: the error
    ``||eps - silu(r_c) d||^2`` grows with ``r_c`` by a margin of many noise standard deviations.
    """
    torch.manual_seed(0)
    hidden = 128
    dit = DiT(input_size=LATENT, patch_size=4, in_channels=4, hidden_size=hidden, depth=1, num_heads=4,
              num_classes=1000, learn_sigma=True)
    ranks = torch.full((1001,), RANK_REST)
    for c, r in RANKS.items():
        ranks[c] = r
    alpha = 100.0
    with torch.no_grad():
        dit.t_embedder.mlp[2].weight.zero_()
        dit.y_embedder.embedding_table.weight.copy_(ranks[:, None].expand(-1, hidden))
        mod = dit.final_layer.adaLN_modulation[1].weight
        mod.zero_()
        mod[:hidden] = alpha * torch.eye(hidden)
        lin = dit.final_layer.linear.weight
        lin.copy_(torch.randn(lin.shape) * 4.0 / (alpha * math.sqrt(hidden)))
    return dit


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("weights")
    torch.save(rigged_dit().state_dict(), tmp / "DiT-tiny-16.pt")  # the original repo's format
    torch.manual_seed(0)
    blocks = (8, 8)  # one 2x downsample: 16 px images → 8x8 latents
    vae = diffusers.AutoencoderKL(block_out_channels=blocks, latent_channels=4, norm_num_groups=8, sample_size=SIZE,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(tmp / "vae")
    from safetensors.torch import save_file

    net = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.zero_()
        for c, r in RANKS.items():
            net.fc.bias[c] = 5.0 - r  # same order as the DiT: logits = bias
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / "resnet18.safetensors"))
    return {"dit": tmp / "DiT-tiny-16.pt", "vae": tmp / "vae", "resnet": tmp / "resnet18.safetensors"}


def dit_args(weights: dict[str, Path], tmp: Path) -> list[str]:
    return ["--config", str(REPO / "configs" / "dit_xl2_256.yaml"),
            "--model.init_args.pretrained", str(weights["dit"]), "--model.init_args.vae", str(weights["vae"]),
            "--model.init_args.input_size", str(LATENT), "--model.init_args.strategy.init_args.trials", str(TRIALS),
            "--model.init_args.scoring.batch_size", "1000",
            "--model.init_args.results_dir", str(tmp), "--model.init_args.results_file", str(tmp / "results.jsonl")]


def resnet_args(weights: dict[str, Path], tmp: Path) -> list[str]:
    return ["--config", str(REPO / "configs" / "baselines" / "imagenet_resnet18.yaml"),
            "--model.init_args.pretrained_file", str(weights["resnet"]), "--model.init_args.img_size", str(SIZE),
            "--model.init_args.results_dir", str(tmp), "--model.init_args.results_file", str(tmp / "results.jsonl")]


def common_args(root: Path, preset: str, tmp: Path) -> list[str]:
    return ["--data", preset, "--data.init_args.root", str(root), "--data.init_args.image_size", str(SIZE),
            "--data.init_args.num_workers", "0", "--trainer.accelerator", "cpu",
            "--trainer.default_root_dir", str(tmp), "--trainer.enable_progress_bar", "false"]


@pytest.mark.parametrize("kind", ["dit", "resnet18"])
@pytest.mark.parametrize("preset", list(LAYOUTS))
def test_preset_scores_its_label_space(tmp_path: Path, weights, preset: str, kind: str) -> None:
    root = write_layout(tmp_path / "data", preset)
    model = dit_args(weights, tmp_path) if kind == "dit" else resnet_args(weights, tmp_path)
    main(["test", *model, *common_args(root, preset, tmp_path)])

    record = json.loads((tmp_path / "results.json").read_text())
    _, n, correct = LAYOUTS[preset]
    assert record["dataset"] == preset
    assert record["label_space_size"] == SPACE[preset] and record["num_classes"] == 1000
    assert record["n"] == n
    assert record["correct"] == correct, f"{preset}: expected the rigged model's class to win ({record})"
    if kind == "dit":
        scored = MODEL_IDS.get(preset, SPACE[preset])  # only the label space's model classes cost forwards
        assert record["forwards_per_image"] == scored * TRIALS
        assert record["kind"] == "generative" and record["checkpoint"] == str(weights["dit"])
    else:
        assert record["forwards_per_image"] == 1 and record["kind"] == "discriminative"
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["dataset"] == preset and json.loads(lines[0])["n"] == n


def test_wrong_layout_names_the_root(tmp_path: Path, weights) -> None:
    v2 = tmp_path / "imagenetv2-matched-frequency-format-val"
    write_class_tree(v2, ["0", "1", "2"], per_class=1)
    args = ["test", *dit_args(weights, tmp_path), *common_args(v2, "imagenet_a", tmp_path)]
    reason = f"root {v2} looks like ImageNet-V2 (numeric class folders); imagenet_a expects wnid folders"
    # In-process the error propagates (as a ValueError jsonargparse wraps; the reason is in it).
    with pytest.raises(ValueError, match=r"looks like ImageNet-V2") as info:
        main(args)
    assert reason in " ".join(str(info.value).split())
    # The command line turns it into one line naming the root.
    proc = subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and reason in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Union subtypes" not in proc.stderr
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("name", ["dit_xl2_256", "dit_xl2_512"])
def test_paper_configs_score_in_fp32_as_the_reference(name: str) -> None:
    """The paper's setting scores in fp32; bf16 is a named fast option, not a silent change of it."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    assert str(config["model"]["init_args"]["scoring"]["precision"]) == "32"
    assert config["trainer"]["precision"] == "32-true"
