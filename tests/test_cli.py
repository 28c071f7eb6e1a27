"""The command line end to end, in-process: every config parses, fit/test/predict/sample run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEBIAN_FASHION, REPO

from diffclf.cli import main
from diffclf.cli.presets import rewrite_aliases
from diffclf.configs import CONFIG_DIR, load_preset
from diffclf.strategies import Strategy

ROOT_CONFIGS = sorted(CONFIG_DIR.glob("*.yaml")) + sorted((CONFIG_DIR / "baselines").glob("*.yaml"))
# Configs whose data exists on this machine (digits is embedded; Fashion-MNIST comes from Debian's package).
LOCAL_DATA_CONFIGS = [p for p in ROOT_CONFIGS if p.stem in ("quickstart", "fashion_mnist") or "fashion_mnist_" in p.stem]
FASHION = DEBIAN_FASHION
FAST = [
    "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
    "--trainer.check_val_every_n_epoch=1", "--trainer.val_check_interval=1.0", "--trainer.max_steps=-1",
    "--trainer.enable_progress_bar=false",
    "--trainer.devices=1", "--trainer.strategy=auto",  # one in-process run; DDP runs are tests/test_distributed.py's
]


def _tmp_run(tmp_path: Path) -> list[str]:
    # One option moves the whole run: logs, config, results and checkpoints/ (every preset leaves them unset).
    return [f"--trainer.default_root_dir={tmp_path}"]


@pytest.mark.parametrize("config", ROOT_CONFIGS, ids=lambda p: p.name)
def test_every_root_config_parses(config: Path) -> None:
    # Parsing through the real entry point with --print_config checks types and class paths.
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)


@pytest.mark.parametrize("config", LOCAL_DATA_CONFIGS, ids=lambda p: p.stem)
def test_every_config_with_local_data_runs_a_few_steps(config: Path, tmp_path: Path) -> None:
    if "fashion" in config.stem and not FASHION.is_dir():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    main(["fit", "--config", str(config), *_tmp_run(tmp_path), *FAST, "--data.init_args.num_workers=0"])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONFIG_DIR / "strategy").glob("*.yaml")))
def test_every_strategy_preset_builds(preset: str) -> None:
    strategy = load_preset("strategy", preset, Strategy, "--strategies")
    assert strategy.max_draws > 0


@pytest.mark.parametrize(("preset", "record"), [
    ("racing_screen_fashion", "fashion_preset.yaml"),
    ("racing_budget_fashion", "fashion_train2000_budget_preset.yaml"),
])
def test_fitted_presets_are_the_strategies_their_records_chose(preset: str, record: str) -> None:
    from diffclf.tasks.diffusion import describe_strategy

    shipped = load_preset("strategy", preset, Strategy, "--strategies")
    chosen = load_preset("strategy", str(REPO / "benchmarks" / "results" / "error_control" / record), Strategy, "--strategies")
    assert describe_strategy(shipped) == describe_strategy(chosen)


def test_every_subcommand_in_the_table_resolves_to_a_documented_function() -> None:
    import importlib

    from diffclf.cli.commands import COMMANDS

    assert {"sample", "publish", "export", "bench", "report", "merge", "build-shift", "cache-latents"} <= set(COMMANDS)
    for name, target in COMMANDS.items():
        module, _, func = target.partition(":")
        fn = getattr(importlib.import_module(module), func)
        assert callable(fn) and fn.__doc__, name


def test_alias_rewrite_finds_packaged_presets_and_names_unknown_ones(tmp_path: Path, monkeypatch) -> None:
    assert rewrite_aliases(["test", "--data", "digits"])[-1] == str(CONFIG_DIR / "data" / "digits.yaml")
    assert rewrite_aliases(["--model.strategy=ttest"])[-1] == str(CONFIG_DIR / "strategy" / "ttest.yaml")
    assert rewrite_aliases(["fit", "--config", "quickstart"])[-1] == str(CONFIG_DIR / "quickstart.yaml")
    # Outside the checkout, the README's configs/... paths resolve to the packaged presets.
    monkeypatch.chdir(tmp_path)
    assert rewrite_aliases(["--config", "configs/quickstart.yaml"])[-1] == str(CONFIG_DIR / "quickstart.yaml")
    (tmp_path / "mine.yaml").write_text("seed_everything: 1\n")
    assert rewrite_aliases(["--config", "mine.yaml"]) == ["--config", "mine.yaml"]
    with pytest.raises(FileNotFoundError, match="--data nosuch: no preset configs/data/nosuch.yaml; known presets: .*digits"):
        rewrite_aliases(["--data", "nosuch"])
    with pytest.raises(FileNotFoundError, match="--config configs/nosuch.yaml: no such file"):
        rewrite_aliases(["--config", "configs/nosuch.yaml"])


def test_the_results_table_starts_on_a_line_of_its_own_under_a_progress_bar(tmp_path: Path, capsys) -> None:
    from tqdm import tqdm

    from diffclf.metrics.classification import ClassificationMetrics
    from diffclf.tasks import TimmClassifier

    task = TimmClassifier("test_resnet", num_classes=3, in_chans=1, img_size=32, results_dir=str(tmp_path))
    metrics = ClassificationMetrics(3)
    metrics.update(torch.eye(3), torch.arange(3))
    bar = tqdm(total=4, file=sys.stdout, desc="Testing DataLoader 0")
    bar.update(4)  # Lightning's bar is still on the line when the test epoch ends
    task.finish_test(metrics, {"model": "m", "strategy": "logits", "seed": 0})
    bar.close()
    before, _, _ = capsys.readouterr().out.partition("dataset  n")
    assert before.endswith(("\r", "\n")), repr(before[-40:])


def test_command_line_errors_begin_on_a_line_of_their_own(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "cli.py"), "test", "--data", "nosuch"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("\nerror: --data nosuch: no preset configs/data/nosuch.yaml"), done.stderr[-500:]


def test_last_checkpoint_holds_the_final_step_between_periodic_saves(tmp_path: Path) -> None:
    # Saves every 2 steps, stops at 5: Lightning's own callback would leave step 4 in last.ckpt.
    cfg = ["--config", str(CONFIG_DIR / "quickstart.yaml")]
    main(["fit", *cfg, *_tmp_run(tmp_path), *FAST, "--trainer.max_epochs=-1", "--trainer.max_steps=5",
          "--trainer.limit_val_batches=0", "--trainer.callbacks.init_args.every_n_train_steps=2"])
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 5


def test_quickstart_fit_resume_test_predict(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the config's own runs/quickstart would land here
    cfg = ["--config", str(CONFIG_DIR / "quickstart.yaml")]
    root = tmp_path / "run"
    run = _tmp_run(root)
    main(["fit", *cfg, *run, *FAST])
    # Every file of the run is under the one folder named on the command line, none under ./runs.
    assert not (tmp_path / "runs").exists()
    assert {p.name for p in root.iterdir()} == {"checkpoints", "config.yaml", "hparams.yaml", "metrics.csv"}
    last = root / "checkpoints" / "last.ckpt"
    assert last.is_file()
    first = torch.load(last, map_location="cpu", weights_only=False)
    assert first["global_step"] == 2

    # Resume continues from the same step with the same EMA weights.
    log = root / "metrics.csv"
    with log.open("a") as f:  # a row the interrupted process wrote after its checkpoint
        f.write("0,2," + "," * (log.read_text().splitlines()[0].count(",") - 1) + "\n")
    main(["fit", *cfg, *run, *FAST, "--trainer.max_epochs=2", f"--ckpt_path={last}"])
    second = torch.load(last, map_location="cpu", weights_only=False)
    assert second["global_step"] == 4
    # The resumed run continues the CSV log: validation rows of both runs, the stale row dropped once.
    steps = [int(line.split(",")[1]) for line in log.read_text().splitlines()[1:]]
    assert 1 in steps and 3 in steps and steps.count(2) == 0, steps

    # Evaluation options come from the command line, not from the training run's saved hparams.
    test_args = ["--data.init_args.eval_limit=8", "--data.init_args.eval_batch_size=8",
                 "--model.init_args.strategy.init_args.trials=4", "--model.init_args.seed=3",
                 "--model.init_args.scoring.error=l1"]
    fit_config = (root / "config.yaml").read_text()
    main(["test", *cfg, *run, *test_args, f"--ckpt_path={last}"])
    # Evaluating in the training folder, with or without a logger, keeps the record of how it was trained.
    main(["validate", *cfg, *run, f"--ckpt_path={last}", "--trainer.logger=false", "--trainer.limit_val_batches=1"])
    assert (root / "config.yaml").read_text() == fit_config
    assert (root / "config_validate.yaml").is_file()
    assert "error: l1" in (root / "test" / "config_test.yaml").read_text()
    assert not (tmp_path / "runs").exists()
    record = json.loads((root / "results.json").read_text())
    for key in ("dataset", "num_classes", "n", "correct", "accuracy", "ci_low", "ci_high", "ci_level",
                "mean_per_class_accuracy", "top5_accuracy", "forwards_per_image", "seconds_per_image",
                "strategy", "seed"):
        assert key in record, key
    assert record["n"] == 8 and record["forwards_per_image"] == 40
    assert record["seed"] == 3 and record["scoring"]["error"] == "l1"
    assert record["ci_low"] <= record["accuracy"] <= record["ci_high"]

    preds = root / "preds.jsonl"
    main(["predict", *cfg, *run, "--data.init_args.eval_limit=8", "--data.init_args.eval_batch_size=8",
          "--model.init_args.strategy.init_args.trials=4", f"--ckpt_path={last}",
          "--trainer.callbacks+=diffclf.tasks.callbacks.PredictionWriter", f"--trainer.callbacks.output={preds}"])
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(8))
    assert all(len(r["probs"]) == 10 and abs(sum(r["probs"]) - 1) < 1e-4 for r in rows)

    grid = root / "grid.png"
    main(["sample", f"--ckpt_path={last}", f"--out={grid}", "--per_class=2", "--steps=3", "--classes=[0,1,2]"])
    assert grid.is_file() and grid.stat().st_size > 0
