"""The benchmark scripts that produce the recorded result files: run on small inputs, checked against counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import corruption_breakdown
import eval_choices
from strategies import test_batches as load_batches

DIGITS_CKPT = REPO / "checkpoints" / "digits_dit_t2.ckpt"


def _shift(tmp_path: Path) -> Path:
    folder = tmp_path / "shift"
    folder.mkdir()
    np.savez(
        folder / "shift.npz",
        images=np.zeros((6, 4, 4), np.uint8),
        labels=np.array([0, 1, 2, 0, 1, 2]),
        corruption=np.array(["noise", "noise", "noise", "blur", "blur", "blur"]),
        severity=np.array([1, 3, 3, 1, 1, 3], np.int8),
    )
    return folder


def _preds(path: Path, rows: list[tuple[int, int, int]]) -> Path:
    path.write_text("".join(json.dumps({"index": i, "target": t, "pred": p}) + "\n" for i, t, p in rows))
    return path


def test_corruption_breakdown_counts_per_corruption_and_severity(tmp_path: Path) -> None:
    shift = _shift(tmp_path)
    preds = _preds(tmp_path / "m.jsonl", [(0, 0, 0), (1, 1, 0), (2, 2, 2), (3, 0, 0), (4, 1, 1), (5, 2, 0)])
    out = corruption_breakdown.main(["--shift", str(shift), "--preds", f"m={preds}", "--out", str(tmp_path / "o")])
    table = out["tables"]["m"]
    assert (table["noise"]["correct"], table["noise"]["n"]) == (2, 3)
    assert (table["noise@3"]["correct"], table["noise@3"]["n"]) == (1, 2)
    assert (table["blur@1"]["correct"], table["blur"]["correct"], table["all"]["correct"]) == (2, 2, 4)
    assert "| noise | 66.7" in (tmp_path / "o.md").read_text()


def test_corruption_breakdown_refuses_predictions_of_other_images(tmp_path: Path) -> None:
    shift = _shift(tmp_path)
    partial = _preds(tmp_path / "p.jsonl", [(0, 0, 0), (1, 1, 1)])
    with pytest.raises(SystemExit, match="4 shift images missing"):
        corruption_breakdown.main(["--shift", str(shift), "--preds", f"m={partial}", "--out", str(tmp_path / "o")])
    other = _preds(tmp_path / "q.jsonl", [(i, 9, 9) for i in range(6)])
    with pytest.raises(SystemExit, match="does not match the shift's labels"):
        corruption_breakdown.main(["--shift", str(shift), "--preds", f"m={other}", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="expected NAME=FILE.jsonl"):
        corruption_breakdown.main(["--shift", str(shift), "--preds", str(other), "--out", str(tmp_path / "o")])


def test_train_split_batches_are_unflipped_training_images_in_file_order() -> None:
    dm, batches = load_batches("digits", ["flip=true"], limit=70, split="train")  # a model trained with flips
    images = torch.cat([b[0] for b in batches])
    assert torch.cat([b[2] for b in batches]).tolist() == list(range(70))
    base = dm.train_dataset.base
    assert torch.equal(images, torch.stack([base[i][0] for i in range(70)]))
    assert not torch.equal(images, images.flip(-1))  # the check above can tell a flipped image


@pytest.mark.skipif(not DIGITS_CKPT.is_file(), reason="published digits checkpoint not in this checkout")
def test_eval_choices_runs_selected_rows_on_the_training_split(tmp_path: Path) -> None:
    out = eval_choices.main([
        "--ckpt_path", str(DIGITS_CKPT), "--data", "digits", "--split", "train", "--limit", "20",
        "--draws", "4", "--prefixes", "2", "--only", "t in [0, 500)", "--threads", "1", "--out", str(tmp_path / "ec"),
    ])
    names = [r["name"] for r in out["rows"]]
    assert names[:2] == ["reference: L2, even grid, t in [0, 1000)", "t in [0, 500)"]
    assert not any("flip" in n or "L1" in n for n in names)
    ref, row = out["rows"][0], out["rows"][1]
    assert ref["fixed"] == ref["broken"] == 0
    assert row["correct"] - ref["correct"] == row["fixed"] - row["broken"]
    assert out["meta"]["split"] == "train" and out["meta"]["reweight_check"] is None
    assert "20 train images" in (tmp_path / "ec.md").read_text()


def test_eval_choices_refuses_a_row_filter_that_matches_nothing(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no row name contains it"):
        eval_choices.main(["--ckpt_path", "unused.ckpt", "--only", "t in [0, 600)", "--out", str(tmp_path / "ec")])
