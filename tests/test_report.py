"""The report on hand-written records: tables, effective robustness, figure, refusals, CLI signature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from jsonargparse import CLI

from diffclf.metrics.accuracy import clopper_pearson
from diffclf.metrics.report import run_report
from diffclf.metrics.results import make_record
from diffclf.metrics.robustness import expit, logit

N = 1000
ID_ACC = {"resnet_a": 0.60, "resnet_b": 0.70, "vit_c": 0.80, "DiT-XL/2": 0.75}
LINE = (1.2, -1.0)  # logit(OOD) = 1.2 logit(ID) - 1.0 for the discriminative models


def _rec(
    model: str, dataset: str, acc: float, kind: str = "discriminative", level: float = 0.95, size: int = 1000
) -> dict:
    correct = round(acc * N)
    metrics = {
        "n": N,
        "correct": correct,
        "accuracy": correct / N,
        "top5_accuracy": 0.9,
        "mean_per_class_accuracy": correct / N,
        "forwards_per_image": 1.0,
        "seconds_per_image": 0.01,
    }
    return make_record(
        metrics,
        level,
        model=model,
        kind=kind,
        checkpoint=f"{model}.ckpt",
        dataset=dataset,
        num_classes=1000,
        label_space_size=size,
        strategy="logits" if kind == "discriminative" else "Exhaustive(trials=250)",
        seed=0,
        commit="test",
        timestamp="2025-01-01T00:00:00+00:00",
    )


def _ood(model: str) -> float:
    acc = expit(LINE[0] * logit(ID_ACC[model]) + LINE[1])
    return float(acc + (0.10 if model == "DiT-XL/2" else 0.0))  # the generative model sits 10 points above


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _records() -> list[dict]:
    recs = []
    for model, acc in ID_ACC.items():
        kind = "generative" if model.startswith("DiT") else "discriminative"
        recs.append(_rec(model, "imagenet", acc, kind))
        recs.append(_rec(model, "imagenet_v2", _ood(model), kind))
    return recs


def test_report_writes_tables_figure_and_effective_robustness(tmp_path: Path, capsys) -> None:
    src = _write(tmp_path / "all.jsonl", _records())
    report = run_report([str(src)], str(tmp_path / "out"), id_dataset="imagenet")
    out = tmp_path / "out"
    for name in ("report.md", "report.json", "effective_robustness.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "effective_robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text()) == report
    assert report["datasets"] == ["imagenet", "imagenet_v2"]
    fit = report["fits"]["imagenet_v2"]
    assert fit["slope"] == pytest.approx(LINE[0], abs=0.02) and fit["intercept"] == pytest.approx(
        LINE[1], abs=0.02
    )
    dit = next(p for p in report["effective_robustness"] if p["model"] == "DiT-XL/2")
    correct = round(_ood("DiT-XL/2") * N)
    predicted = expit(fit["slope"] * logit(0.75) + fit["intercept"])
    assert dit["er"] == pytest.approx(100 * (correct / N - predicted))
    assert dit["er"] == pytest.approx(10, abs=0.3)
    low, high = clopper_pearson(correct, N, 0.95)
    assert (dit["er_low"], dit["er_high"]) == (
        pytest.approx(100 * (low - predicted)),
        pytest.approx(100 * (high - predicted)),
    )
    md = (out / "report.md").read_text()
    lo, hi = clopper_pearson(600, N, 0.95)
    assert f"60.0 [{100 * lo:.1f}, {100 * hi:.1f}]" in md and "+10." in md
    assert "resnet_a" in capsys.readouterr().out


def test_level_recomputes_every_interval_and_mixed_levels_are_refused(tmp_path: Path) -> None:
    recs = _records()
    recs[0] = _rec("resnet_a", "imagenet", 0.60, level=0.99)
    src = _write(tmp_path / "mixed.jsonl", recs)
    with pytest.raises(SystemExit, match="mix ci_level 0.95, 0.99 .*pass --level"):
        run_report([str(src)], str(tmp_path / "out"), id_dataset="imagenet")
    report = run_report([str(src)], str(tmp_path / "out"), id_dataset="imagenet", level=0.995)
    row = next(r for r in report["accuracy"] if r["model"] == "resnet_a" and r["dataset"] == "imagenet")
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(clopper_pearson(600, N, 0.995))


def test_incompatible_label_spaces_are_refused(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.jsonl", _records())
    other = _write(tmp_path / "other.jsonl", [_rec("resnet_a", "imagenet_v2", 0.4, size=200)])
    with pytest.raises(SystemExit, match="imagenet_v2.* different label-space sizes.*other.jsonl:1"):
        run_report([str(good), str(other)], str(tmp_path / "out"), id_dataset="imagenet")


def test_a_file_with_missing_fields_is_refused(tmp_path: Path) -> None:
    rec = _records()[0]
    del rec["n"]
    bad = _write(tmp_path / "bad.jsonl", [rec])
    with pytest.raises(SystemExit, match="bad.jsonl:1: not a diffclf results record: missing n"):
        run_report([str(bad)], str(tmp_path / "out"), id_dataset="imagenet")


def test_imagenet_a_uses_the_200_class_id_dataset_and_one_model_gives_no_fit(tmp_path: Path) -> None:
    recs = [
        _rec("resnet_a", "imagenet", 0.76),
        _rec("resnet_a", "imagenet_200", 0.80, size=200),
        _rec("resnet_a", "imagenet_a", 0.0, size=200),
        _rec("DiT-XL/2", "imagenet_200", 0.82, "generative", size=200),
        _rec("DiT-XL/2", "imagenet_a", 0.2, "generative", size=200),
    ]
    src = _write(tmp_path / "a.jsonl", recs)
    report = run_report([str(src)], str(tmp_path / "out"), id_dataset="imagenet")
    assert report["datasets"] == ["imagenet", "imagenet_200", "imagenet_a"]
    assert {p["id_dataset"] for p in report["effective_robustness"]} == {"imagenet_200"}
    assert report["fits"] == {"imagenet_a": None}
    assert any("imagenet_a: no baseline fit (1 discriminative" in n for n in report["notes"])
    assert all(
        np.isnan(p["er"]) if isinstance(p["er"], float) else p["er"] is None
        for p in report["effective_robustness"]
    )
    assert "| resnet_a | 76.0 [" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "effective_robustness.png").stat().st_size > 0


def test_report_signature_parses_as_a_cli(tmp_path: Path) -> None:
    src = _write(tmp_path / "all.jsonl", _records())
    report = CLI(
        run_report,
        as_positional=False,
        args=[
            "--results",
            f"[{src}]",
            "--out",
            str(tmp_path / "cli"),
            "--id_dataset",
            "imagenet",
            "--level",
            "0.995",
            "--id_for",
            '{"imagenet_v2": "imagenet"}',
        ],
    )
    assert report["level"] == 0.995 and (tmp_path / "cli" / "report.md").is_file()


def test_reruns_keep_the_latest_and_different_strategies_are_refused(tmp_path: Path) -> None:
    recs = _records()
    rerun = {**_rec("resnet_a", "imagenet", 0.61), "timestamp": "2025-02-01T00:00:00+00:00"}
    src = _write(tmp_path / "rerun.jsonl", [*recs, rerun])
    report = run_report([str(src)], str(tmp_path / "out"), id_dataset="imagenet")
    row = next(r for r in report["accuracy"] if r["model"] == "resnet_a" and r["dataset"] == "imagenet")
    assert row["accuracy"] == 0.61 and any("kept the latest" in n for n in report["notes"])
    other = {**_rec("DiT-XL/2", "imagenet", 0.7, "generative"), "strategy": "Adaptive(keep=[5, 1])"}
    src = _write(tmp_path / "strategies.jsonl", [*recs, other])
    with pytest.raises(SystemExit, match="'DiT-XL/2' on 'imagenet' has runs with different strategy"):
        run_report([str(src)], str(tmp_path / "out"), id_dataset="imagenet")
    labelled = {**other, "label": "DiT-XL/2 adaptive"}
    src = _write(tmp_path / "labelled.jsonl", [*recs, labelled])
    report = run_report([str(src)], str(tmp_path / "out"), id_dataset="imagenet")
    assert {"name": "DiT-XL/2 adaptive", "kind": "generative"} in report["models"]


def test_runs_that_differ_only_in_scoring_are_not_merged(tmp_path: Path) -> None:
    recs = _records()
    scoring = {"design": "even", "error": "l2", "noise": "per_image", "weighting": "none"}
    dit = next(r for r in recs if r["model"] == "DiT-XL/2" and r["dataset"] == "imagenet")
    l2 = {**dit, "scoring": scoring}
    # The same options in another key order (results.json sorts keys, results files do not) are a re-run.
    rerun = {**l2, "scoring": dict(reversed(list(scoring.items()))), "timestamp": "2025-02-01T00:00:00+00:00"}
    rest = [r for r in recs if r is not dit]
    report = run_report([str(_write(tmp_path / "same.jsonl", [*rest, l2, rerun]))], str(tmp_path / "a"),
                        id_dataset="imagenet")
    assert any("DiT-XL/2 on imagenet: 2 runs of the same configuration" in n for n in report["notes"])
    l1 = {**l2, "scoring": {**scoring, "error": "l1"}, "correct": 600, "accuracy": 600 / N}
    with pytest.raises(SystemExit, match="'DiT-XL/2' on 'imagenet' has runs with different scoring"):
        run_report([str(_write(tmp_path / "differ.jsonl", [*rest, l2, l1]))], str(tmp_path / "b"),
                   id_dataset="imagenet")


def test_reference_model_named_by_the_records_is_kept_out_of_the_fit(tmp_path: Path) -> None:
    recs = [r for r in _records() if r["dataset"] == "imagenet"]
    for model in ID_ACC:
        kind = "generative" if model.startswith("DiT") else "discriminative"
        # vit_c is the reference the hard set was filtered against: ~0 OOD accuracy by construction.
        hard = 0.001 if model == "vit_c" else _ood(model)
        rec = _rec(model, "imagenet_hard", hard, kind)
        rec["exclude_from_fit"] = ["vit_c"]
        recs.append(rec)
    report = run_report([str(_write(tmp_path / "r.jsonl", recs))], str(tmp_path / "out"), id_dataset="imagenet")
    fit = report["fits"]["imagenet_hard"]
    assert sorted(fit["models"]) == ["resnet_a", "resnet_b"]
    assert fit["slope"] == pytest.approx(LINE[0], abs=0.02)
    kept = {(p["model"], p["ood_dataset"]) for p in report["effective_robustness"] if p["kept_out"]}
    assert kept == {("vit_c", "imagenet_hard")}  # flagged, so the figure names it instead of scaling to 0.1%
    with_ref = run_report([str(tmp_path / "r.jsonl")], str(tmp_path / "o2"), id_dataset="imagenet",
                          exclude_from_fit=["resnet_a"])
    assert with_ref["fits"]["imagenet_hard"] is None  # one model left: no line, and the report says so


def test_a_run_on_fewer_images_is_not_taken_as_a_rerun(tmp_path: Path) -> None:
    # A 20-image smoke test once replaced the full run in the table ("kept the latest"), silently.
    recs = _records()
    dit = next(r for r in recs if r["model"] == "DiT-XL/2" and r["dataset"] == "imagenet")
    smoke = {**dit, "n": 20, "correct": 14, "accuracy": 0.7, "timestamp": "2025-02-01T00:00:00+00:00"}
    with pytest.raises(SystemExit, match="'DiT-XL/2' on 'imagenet' has runs with different n"):
        run_report([str(_write(tmp_path / "smoke.jsonl", [*recs, smoke]))], str(tmp_path / "out"), id_dataset="imagenet")
