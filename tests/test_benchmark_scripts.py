"""The benchmark scripts that produce the recorded result files: run on small inputs, checked against counts.

The scripts import only the installed package (``diffclf.tasks.analysis``, ``diffclf.strategies.replay``,
``diffclf.metrics.provenance``); they are loaded here from their files, not from ``sys.path``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import yaml

from diffclf.data import LabelSpace
from diffclf.strategies import Adaptive, Exhaustive, PairedTTest, Racing
from diffclf.strategies.replay import ReplayScorer
from diffclf.tasks.analysis import load_diffusion_task, parse_overrides, run_live, run_replay, split_batches
from diffclf.tasks.diffusion import describe_strategy

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
DIGITS_CKPT = REPO / "checkpoints" / "digits_dit_t2.ckpt"
needs_ckpt = pytest.mark.skipif(not DIGITS_CKPT.is_file(), reason="published digits checkpoint not in this checkout")


def _script(name: str) -> ModuleType:
    """A benchmark script as a module, loaded from its file (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


corruption_breakdown = _script("corruption_breakdown")
error_control = _script("error_control")
variance_sources = _script("variance_sources")
eval_choices = _script("eval_choices")
strategies = _script("strategies")


# ---------------------------------------------------------------------------------------------- layout
def test_benchmark_scripts_import_only_the_installed_package() -> None:
    scripts = sorted(BENCHMARKS.glob("*.py"))
    names = {p.stem for p in scripts}
    assert {"strategies", "eval_choices", "training_curve", "corruption_breakdown"} <= names
    for path in scripts:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                pytest.fail(f"{path.name}:{node.lineno} edits or reads sys.path")
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]} if node.level == 0 else {"<relative>"}
            else:
                continue
            assert not roots & (names | {"<relative>"}), f"{path.name}:{node.lineno} imports another benchmark script"
            for root in roots - {"diffclf", "__future__"}:
                assert root in sys.stdlib_module_names or root in {"torch", "numpy", "matplotlib"}, (
                    f"{path.name}:{node.lineno} imports {root}"
                )


def test_benchmark_commands_use_the_current_names() -> None:
    """Shell scripts, README commands and scripts name options and classes that exist after the restructuring."""
    gone = [
        r"--model\.init_args\.score_\w+",  # flat scoring options, now --model.init_args.scoring.*
        r"--model\.init_args\.(error|design|noise|weighting|weight_rate|t_range|flip_views|temperature)\b",
        r"diffclf\.(writer|module|baselines|allocator|commands)\b",
    ]
    for path in [*BENCHMARKS.glob("*.sh"), BENCHMARKS / "README.md", *BENCHMARKS.glob("*.py")]:
        text = path.read_text()
        for pattern in gone:
            found = re.search(pattern, text)
            assert found is None, f"{path.name}: {found.group(0)}"
    readme = (BENCHMARKS / "README.md").read_text()
    assert "diffclf.metrics.provenance" in readme and "diffclf.tasks.callbacks.PredictionWriter" in readme


# ---------------------------------------------------------------------------------------------- corruptions
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
    # written out of index order: the package reader sorts, the counts do not depend on it
    preds = _preds(tmp_path / "m.jsonl", [(5, 2, 0), (0, 0, 0), (1, 1, 0), (2, 2, 2), (3, 0, 0), (4, 1, 1)])
    out = corruption_breakdown.main(["--shift", str(shift), "--preds", f"m={preds}", "--out", str(tmp_path / "o")])
    table = out["tables"]["m"]
    assert (table["noise"]["correct"], table["noise"]["n"]) == (2, 3)
    assert (table["noise@3"]["correct"], table["noise@3"]["n"]) == (1, 2)
    assert (table["blur@1"]["correct"], table["blur"]["correct"], table["all"]["correct"]) == (2, 2, 4)
    assert "| noise | 66.7" in (tmp_path / "o.md").read_text()
    assert out["command"].startswith("python benchmarks/corruption_breakdown.py --shift ")


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


def test_corruption_breakdown_refuses_unreadable_prediction_files(tmp_path: Path) -> None:
    shift = _shift(tmp_path)
    args = ["--shift", str(shift), "--out", str(tmp_path / "o"), "--preds"]
    with pytest.raises(SystemExit, match="no such file"):
        corruption_breakdown.main([*args, f"m={tmp_path / 'none.jsonl'}"])
    twice = _preds(tmp_path / "t.jsonl", [(i, int(i % 3), 0) for i in [*range(6), 2]])
    with pytest.raises(SystemExit, match="index 2 appears twice"):
        corruption_breakdown.main([*args, f"m={twice}"])
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"index": 0, "target": 0, "pred": 0}\n{"index": 1,\n')
    with pytest.raises(SystemExit, match=r"b\.jsonl:2: not a JSON row"):
        corruption_breakdown.main([*args, f"m={broken}"])
    csv = tmp_path / "c.csv"
    csv.write_text("index,target,pred,top5,forwards\n")
    with pytest.raises(SystemExit, match="expected a .jsonl or .parquet"):
        corruption_breakdown.main([*args, f"m={csv}"])


# ---------------------------------------------------------------------------------------------- batches
def test_train_split_batches_are_unflipped_training_images_in_file_order() -> None:
    dm, batches = split_batches("digits", parse_overrides(["flip=true"]), limit=70, split="train")  # trained with flips
    images = torch.cat([b[0] for b in batches])
    assert torch.cat([b[2] for b in batches]).tolist() == list(range(70))
    base = dm.train_dataset.base
    assert torch.equal(images, torch.stack([base[i][0] for i in range(70)]))
    assert not torch.equal(images, images.flip(-1))  # the check above can tell a flipped image


def test_split_batches_and_overrides_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_overrides(["flip"])
    with pytest.raises(ValueError, match="expected 'test' or 'train'"):
        split_batches("digits", split="val")
    with pytest.raises(FileNotFoundError, match="no preset"):
        split_batches("no_such_data")
    dm, batches = split_batches("digits", limit=5)
    assert [len(b[2]) for b in batches] == [5] and dm.label_space.num_classes == 10


# ---------------------------------------------------------------------------------------------- live and replay
@needs_ckpt
def test_replay_reproduces_live_strategies_and_leaves_the_task_as_it_was() -> None:
    dm, batches = split_batches("digits", limit=8)
    task = load_diffusion_task(DIGITS_CKPT, dm)
    ref = run_live(task, Exhaustive(trials=10), batches, keep_table=True)
    assert ref["errors"].shape == (8, 10, 10) and not torch.isnan(ref["errors"]).any()
    assert ref["candidates"].tolist() == list(range(10)) and ref["forwards"].tolist() == [100] * 8
    assert "new_table" not in vars(task.scorer())  # the table capture is undone
    replay = ReplayScorer.from_run(ref["errors"], ref["index"], task.num_model_classes)
    for strategy in (
        Exhaustive(trials=10),
        Adaptive(keep=[2, 1], trials=[3, 10]),
        PairedTTest(alpha=0.1, min_trials=3, max_trials=10, round_size=1),
    ):
        live = run_live(task, strategy, batches)
        rep = run_replay(task, strategy, batches, replay)
        assert torch.equal(rep["pred"], live["pred"]) and torch.equal(rep["forwards"], live["forwards"])
        assert torch.equal(rep["finalists"], live["finalists"]) and "seconds" not in rep
        assert task.scorer() is not replay  # the task scores with its own scorer again
    assert (live["forwards"] < 100).any()  # the t-test did drop classes, so the replay had something to count
    with pytest.raises(ValueError, match="does not fit"):
        run_replay(task, Exhaustive(trials=5), batches, replay)  # a 5-draw grid is not a prefix of these draws
    with pytest.raises(KeyError, match="no recorded errors"):
        run_replay(task, Exhaustive(trials=10), [(batches[0][0], batches[0][1], batches[0][2] + 1000)], replay)


def test_summarise_counts_a_capped_t_tests_undecided_images_and_its_own_thresholds() -> None:
    """Against a from-scratch paired t-test (scipy's ttest_rel) on the same recorded errors: with a trial_cap no
    class reaches max_trials, so counting at max_trials once reported 0 undecided images, and the printed
    critical values were two-sided at max_trials whatever the strategy tested."""
    import numpy as np
    from scipy import stats

    from diffclf.tasks.analysis import summarise

    dm, batches = split_batches("digits", limit=24)
    task = load_diffusion_task(DIGITS_CKPT, dm)
    ref = run_live(task, Exhaustive(trials=30), batches, keep_table=True)
    alpha, first, step, cap = 0.01, 5, 5, 15
    strategy = PairedTTest(alpha=alpha, min_trials=first, max_trials=30, round_size=step, trial_cap=cap,
                           alternative="one-sided")
    row = summarise("t", strategy, run_replay(task, strategy, batches, ReplayScorer.from_run(
        ref["errors"], ref["index"], task.num_model_classes)), None)
    undecided = 0
    for e in ref["errors"].double().numpy():
        left, n = list(range(len(e))), 0
        while n < cap and len(left) > 1:
            n = min(n + step, cap)
            if n >= first:
                best = left[int(np.argmin([e[c, :n].mean() for c in left]))]
                left = [c for c in left if c == best
                        or not stats.ttest_rel(e[c, :n], e[best, :n], alternative="greater").pvalue < alpha]
        undecided += len(left) >= 2
    assert undecided > 0 and row["images_undecided_at_max_trials"] == undecided
    assert row["critical_t_first_test"] == pytest.approx(stats.t.isf(alpha, first - 1))
    assert row["critical_t_at_max_trials"] == pytest.approx(stats.t.isf(alpha, cap - 1))


@needs_ckpt
def test_load_diffusion_task_refuses_a_label_space_over_other_classes() -> None:
    dm, _ = split_batches("digits", limit=1)
    dm.label_space = LabelSpace.identity([str(i) for i in range(7)], name="seven")
    with pytest.raises(ValueError, match="10 classes but the data's label space 'seven'"):
        load_diffusion_task(DIGITS_CKPT, dm)


@needs_ckpt
def test_strategies_runs_live_replays_and_renders(tmp_path: Path) -> None:
    out = strategies.main([
        "--ckpt_path", str(DIGITS_CKPT), "--data", "digits", "--limit", "3", "--threads", "1",
        "--out", str(tmp_path / "s"),
    ])
    rows, meta = out["strategies"], out["meta"]
    assert [r["name"] for r in rows] == [name for name, _ in strategies.default_strategies()]
    assert rows[0]["forwards_per_image"] == 1000 and all(r["images"] == 3 for r in rows)
    assert meta["replay_matches_live"] and all(meta["replay_matches_live"].values())
    live = {r["name"] for r in out["sweep"] if not r["replayed"]}
    assert live == {r["name"] for r in out["sweep"] if re.fullmatch(r"adaptive \[1\]x\[\d+\]", r["name"])}
    assert set(meta["device"]) == {"cpu", "cpu_family_model", "logical_cpus", "torch_threads", "device"}
    assert meta["command"].startswith("python benchmarks/strategies.py --ckpt_path ")
    assert meta["scoring"]["precision"] == "32" and meta["global_step"] == 5500
    md = (tmp_path / "s.md").read_text()
    assert "classified live, untimed" in md and "adaptive [1]x[2]†" in md
    again = strategies.main(["--out", str(tmp_path / "s"), "--render"])
    assert again["strategies"] == json.loads(json.dumps(rows)) and (tmp_path / "s.md").read_text() == md


@needs_ckpt
def test_error_control_records_fits_on_training_images_and_replays_what_runs_live(tmp_path: Path) -> None:
    common = ["--ckpt_path", str(DIGITS_CKPT), "--data", "digits", "--draws", "8", "--threads", "1"]
    error_control.main(["record", *common, "--split", "test", "--limit", "4", "--out", str(tmp_path / "te.pt")])
    error_control.main(["record", *common, "--split", "train", "--limit", "6", "--out", str(tmp_path / "tr.pt")])
    table = torch.load(tmp_path / "te.pt", weights_only=False)
    assert table["errors"].shape == (4, 10, 8) and not torch.isnan(table["errors"]).any()
    assert table["meta"]["split"] == "test" and table["timesteps"].shape == (8,)
    error_control.main([
        "evaluate", "--train", str(tmp_path / "tr.pt"), "--test", str(tmp_path / "te.pt"),
        "--ckpt_path", str(DIGITS_CKPT), "--data", "digits", "--threads", "1", "--bins", "4",
        "--max_drop_points", "100", "--min_agreement", "0", "--budget_pct", "40", "--out", str(tmp_path / "ec"),
    ])
    result = json.loads((tmp_path / "ec.json").read_text())
    test_rows = {r["name"]: r for r in result["test"]}
    assert test_rows["exhaustive"]["forwards_per_image"] == 80 and test_rows["exhaustive"]["agreement"] == 1.0
    chosen = result["chosen"]["name"]
    assert chosen in test_rows and chosen in {r["name"] for r in result["train"]}
    train_cost = {r["name"]: r["forwards_per_image"] for r in result["train"]}
    assert train_cost[chosen] == min(train_cost.values())  # the fit rule with no accuracy constraint
    assert result["live"]["replay_matches_live"] is True
    assert len(result["profile"]["timestep_scale"]) == 4
    assert {"racing pooled+strat+tiers z=2.5 min=3", "racing pooled+strat t a=0.02 min=2",
            "racing pooled+tiers+screen s=2.0 t a=0.02 min=2"} <= set(test_rows)
    within = [r for r in result["train"] if r["accuracy_diff_own_points"] >= -0.5 and r["name"].startswith(("racing", "ttest pooled"))]
    bound = result["targets"]["at_bound"]  # the second fit rule: the target's own 0.5 points on the training images
    assert bound["train"]["forwards_per_image"] == min(r["forwards_per_image"] for r in within)
    assert bound["pct_of_exhaustive"] == test_rows[bound["name"]]["forwards_pct_of_exhaustive"]
    budget = result["targets"]["at_budget"]  # the third: the most accurate row within --budget_pct of forwards
    cheap = [r for r in result["train"] if r["forwards_pct_of_exhaustive"] <= 40 and r["name"].startswith(("racing", "ttest pooled"))]
    # an independent reading of the rule: best accuracy against its own exhaustive, then agreement, then cost
    best = max(r["accuracy_diff_own_points"] for r in cheap)
    best_agree = max(r["agreement_own"] for r in cheap if r["accuracy_diff_own_points"] == best)
    assert budget["train"]["accuracy_diff_own_points"] == best and budget["train"]["agreement_own"] == best_agree
    assert budget["train"]["forwards_per_image"] == min(
        r["forwards_per_image"] for r in cheap if r["accuracy_diff_own_points"] == best and r["agreement_own"] == best_agree
    )
    assert max(r["forwards_pct_of_exhaustive"] for r in result["train"]) > 40  # the bound excluded rows
    assert budget["live"]["replay_matches_live"] is True
    budget_preset = yaml.safe_load((tmp_path / "ec_budget_preset.yaml").read_text())
    budget_class = {"diffclf.strategies.Racing": Racing, "diffclf.strategies.PairedTTest": PairedTTest}[budget_preset["class_path"]]
    assert describe_strategy(budget_class(**budget_preset["init_args"])) == budget["train"]["strategy"]
    assert "# (" in (text := (tmp_path / "ec_budget_preset.yaml").read_text()) and "the most accurate setting" in text
    preset = yaml.safe_load((tmp_path / "ec_preset.yaml").read_text())
    chosen_class = {"diffclf.strategies.Racing": Racing, "diffclf.strategies.PairedTTest": PairedTTest}[preset["class_path"]]
    assert preset["init_args"]["max_trials"] == 8
    assert describe_strategy(chosen_class(**preset["init_args"])) == result["chosen"]["strategy"]  # the preset is the choice
    with pytest.raises(SystemExit, match="--test .*recorded on the train split, expected test"):
        error_control.main([
            "evaluate", "--train", str(tmp_path / "tr.pt"), "--test", str(tmp_path / "tr.pt"),
            "--ckpt_path", str(DIGITS_CKPT), "--data", "digits", "--out", str(tmp_path / "bad"),
        ])


@needs_ckpt
def test_error_control_parts_recorded_with_skip_merge_into_the_one_run_table(tmp_path: Path) -> None:
    common = ["record", "--ckpt_path", str(DIGITS_CKPT), "--data", "digits", "--draws", "6", "--threads", "1",
              "--split", "train"]
    error_control.main([*common, "--limit", "7", "--out", str(tmp_path / "whole.pt")])
    error_control.main([*common, "--limit", "3", "--out", str(tmp_path / "a.pt")])
    error_control.main([*common, "--skip", "3", "--limit", "4", "--out", str(tmp_path / "b.pt")])
    error_control.main(["merge", "--table", str(tmp_path / "b.pt"), "--table", str(tmp_path / "a.pt"),
                        "--out", str(tmp_path / "merged.pt")])
    whole, merged = (torch.load(tmp_path / f"{n}.pt", weights_only=False) for n in ("whole", "merged"))
    assert merged["index"].tolist() == list(range(7))
    for key in ("index", "target", "pred", "forwards", "candidates", "timesteps"):
        assert torch.equal(merged[key], whole[key]), key
    torch.testing.assert_close(merged["errors"], whole["errors"])  # the same draws: noise keyed by dataset index
    assert merged["meta"]["accuracy"] == whole["meta"]["accuracy"] and len(merged["meta"]["parts"]) == 2
    test = [*common[:-1], "test"]
    error_control.main([*test, "--limit", "3", "--out", str(tmp_path / "te.pt")])
    for name, skip in (("h1", "3"), ("h2", "5")):  # later test images, in two parts
        error_control.main([*test, "--skip", skip, "--limit", "2", "--out", str(tmp_path / f"{name}.pt")])
    error_control.main(["merge", "--table", str(tmp_path / "h2.pt"), "--table", str(tmp_path / "h1.pt"),
                        "--out", str(tmp_path / "holdout.pt")])
    evaluate = ["evaluate", "--train", str(tmp_path / "merged.pt"), "--test", str(tmp_path / "te.pt"),
                "--ckpt_path", str(DIGITS_CKPT), "--data", "digits", "--threads", "1", "--bins", "4",
                "--max_drop_points", "100", "--min_agreement", "0"]
    error_control.main([*evaluate, "--holdout", str(tmp_path / "holdout.pt"), "--out", str(tmp_path / "ec")])
    result = json.loads((tmp_path / "ec.json").read_text())
    assert result["chosen"]["train"]["images"] == 7
    held = {r["name"]: r for r in result["holdout"]}
    assert held["exhaustive"]["images"] == 4 and held["exhaustive"]["agreement"] == 1.0
    holdout = torch.load(tmp_path / "holdout.pt", weights_only=False)
    assert held["exhaustive"]["accuracy"] == float((holdout["pred"] == holdout["target"]).double().mean())
    assert result["chosen"]["name"] in held and result["targets"]["at_bound"]["name"] in held
    te = torch.load(tmp_path / "te.pt", weights_only=False)  # the pooled exhaustive, counted from the two tables
    both = int((te["pred"] == te["target"]).sum() + (holdout["pred"] == holdout["target"]).sum())
    pooled = {r["name"]: r for r in result["pooled"]}
    assert pooled["exhaustive"]["images"] == 7 and pooled["exhaustive"]["correct"] == both
    chosen_row = pooled[result["chosen"]["name"]]
    tested = next(r for r in result["test"] if r["name"] == result["chosen"]["name"])
    assert chosen_row["correct"] == tested["correct"] + held[result["chosen"]["name"]]["correct"]
    assert chosen_row["accuracy_diff_points"] == pytest.approx(100 * (chosen_row["correct"] - both) / 7)
    error_control.main(["pool", "--result", str(tmp_path / "ec.json"), "--out", str(tmp_path / "pooled")])
    assert json.loads((tmp_path / "pooled.json").read_text())["pooled"] == result["pooled"]
    assert "over its test and holdout images together (7)" in (tmp_path / "pooled.md").read_text()
    md = (tmp_path / "ec.md").read_text()
    assert "recorded in parts by `python benchmarks/error_control.py record " in md and "--skip 3" in md
    assert "on 4 further test images (3 to 6" in md
    with pytest.raises(SystemExit, match="--holdout .*te.pt: expected consecutive test images after --test's 3"):
        error_control.main([*evaluate, "--holdout", str(tmp_path / "te.pt"), "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="--holdout .*merged.pt: expected a plain table of the test split"):
        error_control.main([*evaluate, "--holdout", str(tmp_path / "merged.pt"), "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="must cover consecutive images .* start at \\[0, 5\\]"):
        error_control.main(["merge", "--table", str(tmp_path / "te.pt"), "--table", str(tmp_path / "h2.pt"),
                            "--out", str(tmp_path / "bad.pt")])
    error_control.main([*common, "--skip", "3", "--limit", "4", "--draws", "5", "--out", str(tmp_path / "c.pt")])
    with pytest.raises(SystemExit, match="c.pt: its draws 5 is not .*a.pt's 6"):
        error_control.main(["merge", "--table", str(tmp_path / "a.pt"), "--table", str(tmp_path / "c.pt"),
                            "--out", str(tmp_path / "bad.pt")])
    with pytest.raises(SystemExit, match="--skip 5000: the train split has no images after the first 5000"):
        error_control.main([*common, "--skip", "5000", "--out", str(tmp_path / "none.pt")])


@needs_ckpt
def test_error_control_fits_and_replays_antithetic_tables_against_the_plain_reference(tmp_path: Path) -> None:
    common = ["--ckpt_path", str(DIGITS_CKPT), "--data", "digits", "--draws", "8", "--threads", "1"]
    for split, limit in (("test", "4"), ("train", "6")):
        for anti in ("", "--antithetic"):
            out = tmp_path / f"{split}{anti}.pt"
            error_control.main(["record", *common, "--split", split, "--limit", limit, *[anti][:bool(anti)],
                                "--out", str(out)])
    plain, anti = (torch.load(tmp_path / f"test{a}.pt", weights_only=False) for a in ("", "--antithetic"))
    assert anti["meta"]["scoring"]["antithetic"] is True and "antithetic" not in plain["meta"]["scoring"]
    assert sorted(anti["timesteps"].tolist()) == sorted(plain["timesteps"].tolist())  # the same grid
    assert not torch.equal(anti["errors"], plain["errors"])
    tables = ["--train", str(tmp_path / "train.pt"), "--test", str(tmp_path / "test.pt")]
    anti_tables = ["--antithetic_train", str(tmp_path / "train--antithetic.pt"),
                   "--antithetic_test", str(tmp_path / "test--antithetic.pt")]
    evaluate = ["evaluate", *tables, *anti_tables, "--ckpt_path", str(DIGITS_CKPT), "--data", "digits",
                "--threads", "1", "--bins", "4", "--max_drop_points", "100", "--min_agreement", "0"]
    error_control.main([*evaluate, "--choose_from", "racing anti", "--out", str(tmp_path / "ec")])
    result = json.loads((tmp_path / "ec.json").read_text())
    rows = {r["name"]: r for r in result["test"]}
    assert result["chosen"]["name"].startswith("racing anti") and "antithetic=True" in result["chosen"]["strategy"]
    assert result["live"]["replay_matches_live"] is True  # the live run drew the same antithetic pairs
    exh = rows["exhaustive anti"]
    assert exh["forwards_per_image"] == 80  # judged against the plain reference's predictions:
    anti_pred = anti["errors"].mean(dim=-1).argmin(dim=1)
    assert exh["agreement"] == float((anti_pred == plain["pred"]).double().mean())
    assert exh["agreement_own"] == 1.0 and exh["accuracy_diff_own_points"] == 0.0  # its own exhaustive
    assert "racing anti pooled+strat+tiers t a=0.02 min=4" in rows and "ttest pooled anti a=0.1 min=4" in rows
    preset = yaml.safe_load((tmp_path / "ec_preset.yaml").read_text())
    assert preset["init_args"]["antithetic"] is True
    with pytest.raises(SystemExit, match="--antithetic_test .*expected a table recorded with --antithetic"):
        error_control.main([*evaluate[:5], *anti_tables[:2], "--antithetic_test", str(tmp_path / "test.pt"),
                            *evaluate[9:], "--out", str(tmp_path / "bad")])


def test_timestep_tiers_score_the_bins_that_move_the_mean_first() -> None:
    assert error_control.timestep_tiers([0.5, 1.0, 0.2, 0.09, 0.001]) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert error_control.timestep_tiers([0.5, 1.0, 0.2], share=0.6) == [0.0, 1.0, 0.0]


def even_order_timesteps(d: int) -> list[int]:
    """The timesteps of a ``d``-draw replay in its draw order (what `record` stores)."""
    return ReplayScorer(torch.zeros(1, 1, d), {0: 0}, 1).timesteps(torch.tensor([0]))[0].tolist()


def _write_table(
    path: Path, errors: torch.Tensor, target: torch.Tensor, times: torch.Tensor, antithetic: bool = False
) -> str:
    scoring = {"antithetic": True} if antithetic else {}
    torch.save({"errors": errors, "target": target, "timesteps": times,
                "meta": {"data": "synthetic", "split": "test", "scoring": scoring}}, path)
    return str(path)


def test_variance_sources_measures_what_antithetic_pairs_save(tmp_path: Path) -> None:
    """Partners whose noise is negatively correlated: their mean's local variance is under two independent draws';
    the same errors with independent partners are not."""
    g = torch.Generator().manual_seed(1)
    n, k, d = 40, 3, 64
    times = torch.arange(d) * 15  # draw order = t order: partners are neighbours
    noise = torch.randn(n, k, d, generator=g, dtype=torch.float64)
    anti = noise.clone()
    anti[..., 1::2] = -0.7 * anti[..., 0::2] + 0.714 * anti[..., 1::2]
    base = 5.0 + 0.3 * torch.arange(k, dtype=torch.float64).view(1, k, 1)
    target = torch.zeros(n, dtype=torch.long)
    paths = [_write_table(tmp_path / f"{name}.pt", (base + 0.2 * e).float(), target, times, antithetic=True)
             for name, e in (("anti", anti), ("independent", noise))]
    out = variance_sources.main(["tables", "--table", paths[0], "--table", paths[1], "--out", str(tmp_path / "vs")])
    ratio = [t["antithetic_pair_over_independent_local_variance"]["median"] for t in out["tables"]]
    # 1 + rho = 0.3 for the partners; counting the partners' own differences in the per-draw variance reads 0.23
    assert 0.26 < ratio[0] < 0.4 and 0.7 < ratio[1] < 1.3
    assert "a pair's local variance over two independent draws'" in (tmp_path / "vs.md").read_text()


def test_variance_sources_separates_the_gaps_change_with_t_from_noise(tmp_path: Path) -> None:
    """A gap that swings with t is mostly not noise for the stratified estimator; pure noise is all noise."""
    g = torch.Generator().manual_seed(0)
    n, k, d = 40, 3, 64
    times = torch.randperm(1000, generator=g)[:d].sort().values[torch.randperm(d, generator=g)]
    swing = 1.0 + 3.0 * torch.sin(times.double() / 160)
    base = torch.full((n, k, d), 5.0, dtype=torch.float64)
    base[:, 1] += 0.3 * swing  # class 1: the runner-up, its gap following t
    base[:, 2] += 2.0
    noise = 0.2 * torch.randn(n, k, d, generator=g, dtype=torch.float64)
    target = torch.zeros(n, dtype=torch.long)
    smooth = _write_table(tmp_path / "smooth.pt", (base + noise).float(), target, times)
    flat = _write_table(tmp_path / "flat.pt", (5.0 + 0.1 * torch.arange(k).view(1, k, 1) + noise).float(), target, times)
    out = variance_sources.main(["tables", "--table", smooth, "--table", flat, "--out", str(tmp_path / "vs")])
    ratio = [t["stratified_over_iid_variance"]["median"] for t in out["tables"]]
    assert ratio[0] < 0.3 and 0.8 < ratio[1] < 1.2
    assert sum(r["images"] for r in out["tables"][0]["near_ties"]) == n
    assert (tmp_path / "vs.md").read_text().startswith("# Where the decisive pair's per-draw spread comes from")


def test_variance_sources_costs_puts_the_forwards_where_the_near_ties_are(tmp_path: Path) -> None:
    """A racing strategy spends its forwards on the images whose decisive pair barely differs; the exhaustive
    strategy's loss against itself is zero."""
    g = torch.Generator().manual_seed(2)
    n, k, d = 60, 4, 40
    gap = torch.where(torch.arange(n) < 20, 0.002, 0.5).view(n, 1, 1).double()  # 20 near-ties, 40 clear images
    errors = 1.0 + gap * torch.arange(k, dtype=torch.float64).view(1, k, 1) + 0.1 * torch.randn(n, k, d, generator=g)
    times = torch.tensor(even_order_timesteps(d))
    table = _write_table(tmp_path / "t.pt", errors.float(), torch.zeros(n, dtype=torch.long), times)
    torch.save({**torch.load(table, weights_only=False), "index": torch.arange(n)}, table)
    preset = tmp_path / "racing.yaml"
    preset.write_text(f"class_path: diffclf.strategies.Racing\ninit_args:\n  threshold: 2.0\n  max_trials: {d}\n")
    exhaustive = tmp_path / "exhaustive.yaml"
    exhaustive.write_text(f"class_path: diffclf.strategies.Exhaustive\ninit_args:\n  trials: {d}\n")
    out = variance_sources.main(["costs", "--table", table, "--strategy", str(preset), "--strategy", str(exhaustive),
                                 "--out", str(tmp_path / "c")])
    raced, full = out["strategies"]
    low = [b for b in raced["bins"] if b["snr_high"] <= 0.2]
    assert sum(b["images"] for b in low) == 20
    assert sum(b["forwards_share"] for b in low) > 0.5  # a third of the images, most of the forwards
    assert full["forwards_per_image"] == k * d and all(b["loss_points"] == 0 for b in full["bins"])
    assert sum(b["images"] for b in raced["bins"]) == n


@needs_ckpt
def test_variance_sources_antithetic_scores_both_halves_of_every_draw(tmp_path: Path) -> None:
    out = variance_sources.main([
        "antithetic", "--ckpt_path", str(DIGITS_CKPT), "--data", "digits", "--limit", "3", "--draws", "6",
        "--threads", "1", "--out", str(tmp_path / "anti"),
    ])
    assert out["meta"]["images"] == 3 and out["meta"]["split"] == "train"
    assert -1.0 <= out["correlation_plus_minus"]["median"] <= 1.0
    assert out["antithetic_over_independent_variance"]["median"] > 0
    # the second half is scored with -eps, not eps again (identical halves: correlation 1, ratio 2)
    assert out["local_correlation_plus_minus"]["median"] < 0.99
    assert out["local_antithetic_over_independent_variance"]["median"] < 1.9


# ---------------------------------------------------------------------------------------------- eval choices
@needs_ckpt
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


@needs_ckpt
def test_eval_choices_reweighting_matches_the_live_exp_row(tmp_path: Path) -> None:
    out = eval_choices.main([
        "--ckpt_path", str(DIGITS_CKPT), "--data", "digits", "--limit", "6", "--draws", "4", "--prefixes", "2",
        "--only", "exp weighting k=7", "--threads", "1", "--out", str(tmp_path / "ec"),
    ])
    check = out["meta"]["reweight_check"]
    assert check["agreement"] == 1.0 and check["max_abs_diff"] < 1e-5


def test_eval_choices_refuses_a_row_filter_that_matches_nothing(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no row name contains it"):
        eval_choices.main(["--ckpt_path", "unused.ckpt", "--only", "t in [0, 600)", "--out", str(tmp_path / "ec")])


# ---------------------------------------------------------------------------------------------- time to accuracy
def _curve(label: str, points: list[tuple[float, float]]) -> list[dict]:
    return [{"label": label, "step": i + 1, "train_seconds": s, "images_seen": 128 * (i + 1), "images": 100,
             "correct": round(100 * a), "accuracy": a, "ci_low": a - 0.05, "ci_high": min(1.0, a + 0.05)}
            for i, (s, a) in enumerate(points)]


def test_time_to_accuracy_targets_charge_the_baseline_its_plateau_and_merge_parts(tmp_path: Path) -> None:
    """The baseline's time is its first mark within 1 point of its final accuracy (not the whole budget), and a
    recipe meets the target when it first comes within 5 points by 10x that. Mutation tried: charging the
    baseline its last mark (300 s) turns "late" (goal reached at 2,000 s > 10 x 150 s) into "met": fails."""
    tta = _script("time_to_accuracy")
    rows = {"resnet18": _curve("resnet18", [(60, 0.80), (150, 0.975), (300, 0.98)]),
            "slow": _curve("slow", [(600, 0.90), (1500, 0.94), (3000, 0.99)]),
            "fast": _curve("fast", [(300, 0.70), (900, 0.95)]),
            "late": _curve("late", [(2000, 0.95)]),
            "never": _curve("never", [(900, 0.5)])}
    got = tta.within(rows, "resnet18", points=5, factor=10)
    assert got["fast"]["baseline_seconds"] == 150 and got["fast"]["goal"] == pytest.approx(0.93)
    assert got["fast"]["reached_at_seconds"] == 900 and got["fast"]["ratio"] == pytest.approx(6) and got["fast"]["met"]
    assert got["slow"]["reached_at_seconds"] == 1500 and got["slow"]["ratio"] == pytest.approx(10) and got["slow"]["met"]
    assert got["late"]["reached_at_seconds"] == 2000 and not got["late"]["met"]
    assert got["never"]["reached_at_seconds"] is None and not got["never"]["met"] and got["never"]["open"]
    meta = {"dataset": "d", "recipes": {}, "limit": 100, "trials": 10, "date": "now", "commit": "c", "points": 5,
            "factor": 10, "baseline": None, "command": "x",
            "machine": {"cpu": "cpu", "cpu_family_model": "1/2", "torch_threads": 1}}
    assert got["fast"]["ratio_to_run"] == pytest.approx(3)  # against the baseline's whole 300 s run
    parts = []
    for name, labels in (("a", ["resnet18", "fast"]), ("b", ["never"])):
        part = {"meta": {**meta, "recipes": {k: f"{k}.yaml" for k in labels}, "command": f"run {name}",
                         "extra_args": {k: [f"--{k}_flag", "1"] for k in labels}}, "curves": {k: rows[k] for k in labels}}
        (tmp_path / f"{name}.json").write_text(json.dumps(part))
        parts.append(str(tmp_path / f"{name}.json"))
    result = tta.main(["--dataset", "d", "--baseline", "resnet18", "--out", str(tmp_path / "all"), "--note", "core 1 busy",
                       "--merge", *parts])
    assert list(result["curves"]) == ["resnet18", "fast", "never"] and set(result["targets"]) == {"fast", "never"}
    md = (tmp_path / "all.md").read_text()
    assert "fast: goal 93.0%, reached at 900 s (6.0x); 3.0x the baseline's whole 300 s run: met" in md
    assert "never: goal 93.0%, not reached in 900 s (best 50.0%): open (trained 900 of the 1500 s allowed)" in md
    # every part's command and every recipe's own options survive the merge
    assert "`run a`" in md and "`run b`" in md and "- note: core 1 busy" in md
    assert "`never.yaml --never_flag 1`" in md and "`fast.yaml --fast_flag 1`" in md
    assert (tmp_path / "all.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------- precision
def _precision_run(errors: list[list[float]], targets: list[int], seconds: float) -> dict:
    err = torch.tensor(errors).unsqueeze(2)  # (N, M, 1): one draw per candidate
    return {"errors": err, "pred": err[:, :, 0].argmin(dim=1), "target": torch.tensor(targets),
            "index": torch.arange(10, 10 + len(targets)), "forwards": torch.full((len(targets),), 3),
            "seconds": seconds, "loadavg_1min": [0.0, 0.0]}


def test_precision_compare_counts_changed_predictions_and_their_margins() -> None:
    """Hand-computed: image 1 is a near-tie (margin 0.01) that bf16 flips, image 0 a wide margin it keeps.
    Mutation tried: the rank as one argsort of the margins (their order, not each image's rank): image 1 reads
    rank 2 and the test fails."""
    precision = _script("precision")
    ref = _precision_run([[1.0, 2.0, 3.0], [1.00, 1.01, 2.0], [2.0, 1.0, 1.5]], [0, 0, 1], seconds=3.0)
    bf16 = _precision_run([[1.0, 2.0, 3.1], [1.01, 1.00, 2.0], [2.0, 1.0, 1.5]], [0, 0, 1], seconds=2.0)
    got = precision.compare({"32": ref, "bf16": bf16})
    assert got["reference"] == "32" and got["images"] == 3
    same, changed = got["rows"]
    assert same["changed"] == 0 and same["speedup_vs_reference"] == 1.0
    assert changed["changed"] == 1 and changed["changed_per_1000"] == pytest.approx(1000 / 3)
    assert changed["accuracy"] == pytest.approx(2 / 3) and same["accuracy"] == 1.0
    assert changed["speedup_vs_reference"] == pytest.approx(1.5)
    (img,) = changed["changed_images"]
    assert (img["index"], img["reference_pred"], img["pred"], img["margin_rank"]) == (11, 0, 1, 0)
    assert img["reference_relative_margin"] == pytest.approx(0.01)
    assert got["median_relative_margin"] == pytest.approx(0.5)  # margins 1.0, 0.01, 0.5
    assert changed["max_relative_mean_error_change"] == pytest.approx(0.1 / 3, rel=1e-5)  # 3.0 -> 3.1
    low, high = changed["changed_per_1000_ci"]
    assert 0 < low < 1000 / 3 < high < 1000


def test_precision_fits_the_recheck_margin_from_the_largest_margin_change() -> None:
    """By hand, on the bf16 run's two best classes: image 0 margin (2.0 - 1.0) / 1.0 = 1.0 in both runs; image 1
    (1.0 - 1.01) / 1.01 in fp32 (classes ordered by bf16) against (1.01 - 1.00) / 1.00 = 0.01 in bf16, a change
    of 0.01 + 0.01 / 1.01; image 2 0.5 in both. Mutation tried: the fp32 margin on fp32's own two best classes
    (its absolute value): image 1's change reads 0, the margin 0, and the test fails."""
    precision = _script("precision")
    ref = _precision_run([[1.0, 2.0, 3.0], [1.00, 1.01, 2.0], [2.0, 1.0, 1.5]], [0, 0, 1], seconds=3.0)
    bf16 = _precision_run([[1.0, 2.0, 3.1], [1.01, 1.00, 2.0], [2.0, 1.0, 1.5]], [0, 0, 1], seconds=2.0)
    fit = precision.fit_recheck(ref, bf16)
    assert fit["margin"] == pytest.approx(0.01 + 0.01 / 1.01)
    assert fit["images"] == 3 and fit["changed_predictions"] == 1
    assert fit["rechecked_share"] == pytest.approx(1 / 3)  # only image 1's bf16 margin (0.01) is under it


@needs_ckpt
def test_precision_script_writes_its_record_on_real_images(tmp_path: Path) -> None:
    precision = _script("precision")
    out = tmp_path / "prec"
    result = precision.main(["--ckpt_path", str(DIGITS_CKPT), "--data", "digits", "--limit", "6", "--draws", "2",
                             "--precisions", "32", "bf16", "bf16+compile", "bf16+recheck", "--fit_limit", "5",
                             "--threads", "1", "--out", str(out)])
    ref, bf16, compiled, rechecked = result["rows"]
    fit = result["meta"]["recheck_fits"]["bf16"]
    assert fit["split"] == "train" and fit["images"] == 5 and rechecked["recheck"] == fit["margin"] > 0
    assert rechecked["forwards_per_image"] >= bf16["forwards_per_image"]  # fp32 re-scores of its close calls
    with pytest.raises(SystemExit, match="give the margin as --recheck or fit it with --fit_limit"):
        precision.main(["--ckpt_path", str(DIGITS_CKPT), "--data", "digits", "--limit", "2", "--draws", "2",
                        "--precisions", "32", "bf16+recheck", "--out", str(tmp_path / "bad")])
    assert ref["precision"] == "32" and ref["changed"] == 0 and ref["forwards_per_image"] == 20.0
    assert bf16["precision"] == "bf16" and 0 < bf16["max_relative_mean_error_change"] < 0.1  # it ran in bf16
    assert compiled["precision"] == "bf16+compile" and 0 < compiled["max_relative_mean_error_change"] < 0.1
    md = (tmp_path / "prec.md").read_text()
    assert "`precision: auto` here: auto: " in md and "| bf16 |" in md
    assert json.loads((tmp_path / "prec.json").read_text())["meta"]["strategy"] == "Exhaustive(trials=2)"


# ---------------------------------------------------------------------------------------------- cost model
def test_cost_model_counts_forwards_and_gpu_hours_by_hand(tmp_path: Path) -> None:
    """Hand counts: adaptive_imagenet = 1000x50 + 500x100 + 50x400 + 10x450 = 124,500 (the preset's own comment);
    a top-5 prefilter into adaptive [2,1]x[50,200] = 5x50 + 2x150 = 550. Mutation tried: survivors updated before
    a stage is charged (each stage charged at the classes it keeps): the prefilter's count reads 250 and fails."""
    cost = _script("cost_model")
    assert cost.forwards_per_image(Exhaustive(trials=250), 1000) == (250_000.0, True)
    assert cost.forwards_per_image(Adaptive(keep=[2, 1], trials=[50, 200]), 5) == (550.0, True)
    ttest = PairedTTest(alpha=0.01, min_trials=15, max_trials=100, round_size=10)
    assert cost.forwards_per_image(ttest, 1000) == (20_000.0, False)  # first test after 20 draws: a floor
    bench = {"config": cost.DIT_XL2_256, "best_forwards_per_s": 2500.0, "device": "gpu", "precision": "bf16",
             "best_batch": 512}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    got = cost.main(["--bench_json", str(tmp_path / "bench.json"), "--out", str(tmp_path / "cm")])
    rows = {r["preset"]: r for r in got["rows"] if r["preset"]}
    assert rows["adaptive_imagenet"]["forwards_per_image"] == 124_500
    assert rows["exhaustive_dit"]["gpu_hours"] == pytest.approx(10_000 * 250_000 / 2500 / 3600)
    assert rows["prefilter_imagenet"]["gpu_hours"] == pytest.approx(10_000 * 550 / 2500 / 3600)
    assert rows["prefilter_imagenet"]["recall_bound"] == {"pct": 95.434, "at_least": False}
    assert got["throughput"]["measured"] and "an estimate" not in (tmp_path / "cm.md").read_text()
    top20 = next(r for r in got["rows"] if r["name"].startswith("ResNet-50 top-20"))
    assert top20["recall_bound"] == {"pct": 95.434, "at_least": True, "from_top": 5}
    estimate = cost.main(["--peak_tflops", "100", "--mfu", "0.5", "--out", str(tmp_path / "est")])
    assert estimate["throughput"]["forwards_per_s"] == pytest.approx(50e12 / (2 * 118.6e9), rel=0.01)
    assert "**an estimate, not a measurement**" in (tmp_path / "est.md").read_text()
    (tmp_path / "small.json").write_text(json.dumps({**bench, "config": {"hidden_size": 384, "depth": 12}}))
    with pytest.raises(SystemExit, match="not a DiT-XL/2 bench record"):
        cost.main(["--bench_json", str(tmp_path / "small.json"), "--out", str(tmp_path / "x")])


def _compositional_records(root: Path, model: str, binding_k: int, scores: list, null: list | None = None) -> None:
    from diffclf.metrics.compositional import Rate, binding_summary, shape_bias, winoground_summary

    folder = root / model
    folder.mkdir(parents=True)
    prov = {"device": "cpu", "cpu": "test", "cpu_family_model": "0/0", "date": "2026-12-03", "commit": "abc",
            "checkpoint": f"{model}.ckpt", "model": model.title(), "draws": 5}
    correct = np.arange(20) < binding_k
    tasks = {"Shape": binding_summary(correct).as_dict(), "Shape|Color": binding_summary(~correct).as_dict()}
    (folder / "binding.json").write_text(json.dumps({**prov, "evaluation": "binding", "tasks": tasks}))
    s = torch.tensor(scores)
    summary = winoground_summary(s, ["Object", "Relation"] * (len(scores) // 2))
    wino = {g: {k: r.as_dict() for k, r in rates.items()} for g, rates in summary.items()}
    record = {**prov, "summary": wino, "scores": scores}
    if null is not None:
        normalised = winoground_summary(s - torch.tensor(null).unsqueeze(-1), ["Object", "Relation"] * (len(scores) // 2))
        record["summary_normalised"] = {g: {k: r.as_dict() for k, r in rates.items()} for g, rates in normalised.items()}
    (folder / "winoground.json").write_text(json.dumps(record))
    bias = shape_bias(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 0, 1]), torch.tensor([1, 2, 1, 2]))
    (folder / "cue_conflict.json").write_text(json.dumps({**prov, "n": 4, **bias.as_dict()}))
    assert Rate.of(correct).correct == binding_k


def test_compositional_report_tabulates_every_record_and_the_winoground_diagnostics(tmp_path: Path) -> None:
    """The summary copies each record's figures and adds the two Winoground diagnostics, checked here by hand:
    in pair 0 both captions prefer image 0 while each image prefers its own caption; pair 1 is a perfect group
    score. Mutation tried: the image diagnostic comparing the captions of one image (it reads 0% for model a,
    not 50%)."""
    report = _script("compositional_report")
    same = [[[-1.0, -2.0], [-4.0, -3.0]], [[-1.0, -2.0], [-2.0, -1.0]]]  # s[i][image][caption]
    # Model a's image 0 is easier under every caption (null -1.5 vs -3.5); minus that, pair 0 becomes a group win.
    _compositional_records(tmp_path, "a", 17, same, null=[[-1.5, -3.5], [-1.5, -1.5]])
    _compositional_records(tmp_path, "b", 10, [same[1], same[1]])
    summary = report.main(["--results", str(tmp_path), "--models", "a", "b", "--command", "test", "--no_figure"])
    assert summary["a"]["winoground_diagnostics"] == {"both_captions_same_image": 0.5, "both_images_same_caption": 0.0}
    assert summary["b"]["winoground_diagnostics"] == {"both_captions_same_image": 0.0, "both_images_same_caption": 0.0}
    assert summary["a"]["binding"]["Shape"]["correct"] == 17 and summary["a"]["binding"]["Shape|Color"]["correct"] == 3
    assert summary["a"]["cue_conflict"]["shape_bias"] == 0.5  # 2 shape, 2 texture decisions
    text = (tmp_path / "summary.md").read_text()
    assert "| Shape | 85.0 [62.1, 96.8] * | 50.0 [27.2, 72.8] |" in text
    assert "| Shape\\|Color | 15.0 [3.2, 37.9] * (below chance) |" in text
    assert "| all | 100.0 / 50.0 / 50.0 | 100.0 / 100.0 / 100.0 |" in text
    assert "| all, minus the unconditional error (DiffusionITM) | 100.0 / 100.0 / 100.0 | — |" in text
    assert json.loads((tmp_path / "summary.json").read_text())["command"] == "test"
    with pytest.raises(SystemExit, match="c/binding.json"):
        report.main(["--results", str(tmp_path), "--models", "a", "c", "--no_figure"])


def test_caption_conditioning_swaps_one_left_attribute_and_scores_every_variant_on_shared_draws(tmp_path: Path) -> None:
    """The variants of a scene by hand, and the true caption's error of one timestep recomputed from the EMA
    model's own forward on the script's draws. Mutation tried: a fresh eps per variant (the shares then differ
    from the shared-draw count computed here)."""
    from diffclf.cli import main as cli_main
    from diffclf.data.binding import SceneObject
    from diffclf.data.scenes import VOCABULARY, read_images, read_meta, read_scenes
    from diffclf.data.transforms import to_model_range
    from diffclf.tasks.text_dit import TextDiTClassifier

    script = _script("caption_conditioning")
    red_cylinder = SceneObject(shape="cylinder", color="red", size="small", position="left")
    yellow = SceneObject(shape="sphere", color="yellow", size="large", position="right")
    assert script.caption([red_cylinder, yellow], "color") == \
        "a small blue cylinder on the left and a large yellow sphere on the right"  # red -> yellow taken -> blue
    assert script.caption([red_cylinder, yellow], "shape").startswith("a small red cube on the left")
    assert script.caption([red_cylinder, yellow], "size").startswith("a large red cylinder")
    root = tmp_path / "scenes"
    cli_main(["build-scenes", "--out", str(root), "--seed", "0", "--size", "32", "--train", "8", "--test", "6",
              "--winoground", "2", "--cue_train", "2", "--cue_conflict", "2"])
    torch.manual_seed(0)
    task = TextDiTClassifier(model="TextDiT-T/4", input_size=32, max_tokens=20, vocabulary=list(VOCABULARY),
                             model_kwargs={"hidden_size": 32, "depth": 1, "num_heads": 2, "text_width": 32,
                                           "text_depth": 1, "text_heads": 2})
    for p in task.ema.parameters():  # nonzero output layers, so the caption changes the prediction
        p.data.normal_(0, 0.2)
    ckpt = tmp_path / "tiny.ckpt"
    hparams = {**task.hparams, "_class_path": "diffclf.tasks.text_dit.TextDiTClassifier"}  # as on_save_checkpoint writes
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": hparams}, ckpt)
    record = script.main(["--ckpt_path", str(ckpt), "--root", str(root), "--limit", "6", "--timesteps", "300,700",
                          "--out", str(tmp_path / "cond")])
    assert [r["t"] for r in record["rows"]] == [300, 700] and record["scenes"] == 6
    assert (tmp_path / "cond.md").read_text().count("\n| 300 |") == 1
    folder, meta = read_meta(root)
    scenes = read_scenes(folder, "test")
    x0 = torch.stack([to_model_range(a) for a in read_images(folder, "test", 6, 32)])
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.full((6,), 300, dtype=torch.long)
    x_t = task.schedule.q_sample(x0, t, noise)
    ema = task.ema.eval()

    def err(captions: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return (ema(x_t, t, task.tokenizer.tokenize(captions)) - noise).pow(2).flatten(1).mean(1)

    true = err([script.caption(list(s.objects)) for s in scenes])
    empty = err([""] * 6)
    row = record["rows"][0]
    assert abs(row["true_error"] - float(true.mean())) < 1e-6
    assert row["empty"]["true_lower"] == float((empty > true).float().mean())
