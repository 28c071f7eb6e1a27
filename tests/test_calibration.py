"""Calibration of p(c|x): the metrics against their textbook definitions, the fits against known truths,
probabilities of pruned classes on shared draws, and the calibrate -> test path on the published digits model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO

from diffclf.cli import main
from diffclf.data.label_spaces import label_space_logits
from diffclf.metrics.calibration import Calibration, evaluate, fit_platt, fit_temperature, read_calibration
from diffclf.strategies.base import Classification

DIGITS_CKPT = REPO / "checkpoints" / "digits_dit_t2.ckpt"
DIGITS_CONFIG = REPO / "configs" / "digits.yaml"


def _reference_metrics(probs: list[list[float]], target: list[int], bins: int = 15) -> tuple[float, float, float]:
    """ECE (Guo et al.: sum over bins of |acc - conf| * n_bin / n), NLL and Brier, in plain Python loops."""
    n = len(target)
    buckets: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    nll = brier = 0.0
    for p, y in zip(probs, target):
        pred = max(range(len(p)), key=lambda k: p[k])
        conf = p[pred]
        buckets[min(int(conf * bins), bins - 1)].append((conf, pred == y))
        nll -= math.log(max(p[y], 1e-12))
        brier += sum((pk - (1.0 if k == y else 0.0)) ** 2 for k, pk in enumerate(p))
    ece = sum(abs(sum(c for c, _ in b) / len(b) - sum(h for _, h in b) / len(b)) * len(b) / n for b in buckets if b)
    return ece, nll / n, brier / n


def test_metrics_equal_their_definitions() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=gen, dtype=torch.float64) * 3
    target = torch.randint(0, 7, (500,), generator=gen)
    probs = torch.softmax(logits, dim=1)
    got = evaluate(torch.log_softmax(logits, dim=1), target)
    ece, nll, brier = _reference_metrics(probs.tolist(), target.tolist())
    assert got["ece"] == pytest.approx(ece, abs=1e-9)
    assert got["nll"] == pytest.approx(nll, abs=1e-9)
    assert got["brier"] == pytest.approx(brier, abs=1e-9)
    assert sum(b["count"] for b in got["bins"]) == 500 and len(got["bins"]) == 15


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with() -> None:
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(20000, 10, generator=gen, dtype=torch.float64) * 4
    target = torch.multinomial(torch.softmax(z / 2.5, dim=1), 1, generator=gen).squeeze(1)
    assert fit_temperature(z, target) == pytest.approx(2.5, rel=0.05)
    # Logits in ELBO units (thousands of nats): the bounded search still finds a scale that large.
    assert fit_temperature(z * 5000, target) == pytest.approx(2.5 * 5000, rel=0.05)


def test_fit_platt_recovers_a_logistic_law_of_the_calls() -> None:
    gen = torch.Generator().manual_seed(2)
    calls = torch.randint(200, 20000, (20000,), generator=gen).double()
    a, b = -1.5, 12.0
    p_right = torch.sigmoid(a * calls.log() + b)
    right = torch.rand(20000, generator=gen, dtype=torch.float64) < p_right
    fa, fb = fit_platt(calls.log(), right)
    assert fa == pytest.approx(a, rel=0.1) and fb == pytest.approx(b, rel=0.1)
    with pytest.raises(ValueError, match="do not vary"):
        fit_platt(torch.full((10,), 3.0), torch.ones(10, dtype=torch.bool))


def test_calls_calibration_gives_the_prediction_the_platt_probability() -> None:
    logits = torch.tensor([[0.0, -2.0, -4.0], [-1.0, 0.0, -1.0]])
    calls = torch.tensor([100, 2000])
    cal = Calibration(method="calls", temperature=2.0, platt=(-1.0, 6.0))
    p = cal.log_probs(logits, calls).double().exp()
    torch.testing.assert_close(p.sum(dim=1), torch.ones(2, dtype=torch.float64))
    right = torch.sigmoid(-torch.log(calls.double()) + 6.0)
    torch.testing.assert_close(p[[0, 1], [0, 1]], right.double(), rtol=1e-6, atol=1e-7)
    # The rest is spread as the temperature-scaled probabilities of the other classes.
    assert p[0, 1] / p[0, 2] == pytest.approx(math.exp((-2.0 + 4.0) / 2.0), rel=1e-5)


def test_a_pruned_class_is_compared_with_the_winner_on_the_draws_they_share() -> None:
    # Class 1 was dropped after 2 draws, both at easy timesteps where every class has a small error;
    # the winner (class 0) and class 2 went on to 4 draws with large errors at hard timesteps.
    nan = math.nan
    errors = torch.tensor([[[0.10, 0.10, 0.90, 0.90], [0.12, 0.14, nan, nan], [0.15, 0.15, 0.95, 0.97]]])
    mean = torch.tensor([[0.5, 0.13, 0.555]])
    result = Classification(
        candidates=torch.tensor([[0, 1, 2]]), mean_error=mean, num_draws=torch.tensor([[4, 2, 4]]),
        forwards=torch.tensor([10]), stage=torch.tensor([[2.0, 1.0, 1.5]]), errors=errors,
    )
    assert int(result.pred) == 0
    # Gaps on shared draws: class 1: mean(0.02, 0.04) = 0.03; class 2: mean(0.05, 0.05, 0.05, 0.07) = 0.055.
    torch.testing.assert_close(result.logits(), torch.tensor([[0.0, -0.03, -0.055]]), rtol=1e-5, atol=1e-6)
    # Comparing mean errors over different draws would make the pruned class 1 the most likely one.
    assert result.probs(0.01).argmax(dim=1).item() == 0


def test_label_space_logits_sum_the_probabilities_of_a_class_ids() -> None:
    logits = torch.tensor([[math.log(0.5), math.log(0.2), math.log(0.3)]])
    # Class 0 = ids {0, 2}; class 1 = id {1}, padded by repeating it (as group_index does).
    index = torch.tensor([[0, 2], [1, 1]])
    got = label_space_logits(logits, index).exp()
    torch.testing.assert_close(got, torch.tensor([[0.8, 0.2]]))


# ------------------------------------------------------------------------ the command line path
@pytest.fixture(scope="module")
def digits_calibration(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Predictions of 120 digits *training* images by the published model, and the calibration fitted on them."""
    tmp = tmp_path_factory.mktemp("calibration")
    preds = tmp / "train.jsonl"
    torch.set_num_threads(1)
    main(["predict", "--config", str(DIGITS_CONFIG), "--ckpt_path", str(DIGITS_CKPT),
          f"--trainer.default_root_dir={tmp}", "--trainer.enable_progress_bar=false",
          "--data.init_args.predict_split=train", "--data.init_args.eval_limit=120",
          "--model.init_args.strategy.init_args.trials=20",
          "--trainer.callbacks+=diffclf.tasks.callbacks.PredictionWriter", f"--trainer.callbacks.output={preds}"])
    out = tmp / "calibration.json"
    main(["calibrate", "--predictions", str(preds), "--output", str(out)])
    return preds, out


def test_calibrate_fits_on_training_images_and_test_reports_calibrated_metrics(
    digits_calibration: tuple[Path, Path], tmp_path: Path
) -> None:
    preds, out = digits_calibration
    manifest = json.loads((preds.parent / "train.jsonl.manifest.json").read_text())
    assert manifest["split"] == "train" and manifest["n"] == 120
    cal = read_calibration(out)
    assert cal.fitted_on["split"] == "train" and cal.fitted_on["n"] == 120
    assert cal.fitted_on["after"]["nll"] <= cal.fitted_on["before"]["nll"] + 1e-9
    assert out.with_suffix(".png").stat().st_size > 1000
    args = ["test", "--config", str(DIGITS_CONFIG), "--ckpt_path", str(DIGITS_CKPT),
            f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
            "--data.init_args.eval_limit=60", "--model.init_args.strategy.init_args.trials=20"]
    main([*args, f"--model.init_args.calibration={out}"])
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["calibration"]["temperature"] == pytest.approx(cal.temperature)
    assert record["calibration"]["split"] == "train"
    for key in ("ece", "nll", "brier"):
        assert record[key] is not None and record[key] >= 0
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    # The uncalibrated ELBO probabilities of the same run score a worse NLL than the calibrated ones.
    raw = tmp_path / "raw"
    main([*args, f"--trainer.default_root_dir={raw}"])
    assert json.loads((raw / "results.json").read_text())["nll"] > record["nll"]


def test_calibration_refuses_test_images_and_other_classifiers(
    digits_calibration: tuple[Path, Path], tmp_path: Path
) -> None:
    preds, out = digits_calibration
    test_preds = tmp_path / "test.jsonl"
    test_preds.write_text(preds.read_text())
    meta = json.loads((preds.parent / "train.jsonl.manifest.json").read_text())
    (tmp_path / "test.jsonl.manifest.json").write_text(json.dumps({**meta, "split": "test"}))
    with pytest.raises(ValueError, match="predictions are of the test split"):
        main(["calibrate", "--predictions", str(test_preds), "--output", str(tmp_path / "c.json")])
    with pytest.raises(ValueError, match=r"fitted for another classifier \(strategy"):
        main(["test", "--config", str(DIGITS_CONFIG), "--ckpt_path", str(DIGITS_CKPT),
              f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
              "--data.init_args.eval_limit=4", f"--model.init_args.calibration={out}"])
    with pytest.raises(ValueError, match="validation images of digits are test images"):
        main(["predict", "--config", str(DIGITS_CONFIG), "--ckpt_path", str(DIGITS_CKPT),
              f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
              "--data.init_args.predict_split=val", "--trainer.callbacks+=diffclf.tasks.callbacks.PredictionWriter",
              f"--trainer.callbacks.output={tmp_path / 'val.jsonl'}"])


def test_calls_calibration_puts_its_probability_on_the_given_prediction_and_never_gives_nan() -> None:
    cal = Calibration(method="calls", temperature=1.0, platt=(-1.0, 8.0))
    right = 1 / (1 + math.exp(math.log(151) - 8.0))  # sigmoid(-ln 151 + 8) = 0.9518, by hand
    # Racing ranks by standardised errors, so its prediction (class 1) can trail another class's raw-error logit.
    p = cal.log_probs(torch.tensor([[465.7, 0.0, -1.0]]), torch.tensor([151]), torch.tensor([1])).exp()[0].double()
    rest = torch.tensor([465.7, -1.0], dtype=torch.float64).softmax(0) * (1 - right)
    torch.testing.assert_close(p, torch.stack([rest[0], torch.tensor(right, dtype=torch.float64), rest[1]]),
                               rtol=1e-5, atol=1e-7)
    # A prefilter that proposed one class: the others were never scored, so they share the rest evenly.
    lp = cal.log_probs(torch.tensor([[0.0, -math.inf, -math.inf]]), torch.tensor([151]))
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp.exp()[0].double(), torch.tensor([right, (1 - right) / 2, (1 - right) / 2],
                                                                   dtype=torch.float64), rtol=1e-5, atol=1e-7)


def test_predict_resumed_with_another_calibration_is_refused(tmp_path: Path) -> None:
    # Rows written before and after the change once merged into one file, their p(c|x) on two different maps.
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps(Calibration(method="temperature", temperature=2.0).to_json()))
    out = tmp_path / "p.jsonl"
    args = ["predict", "--config", str(DIGITS_CONFIG), "--ckpt_path", str(DIGITS_CKPT),
            f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
            "--data.init_args.eval_limit=4", "--trainer.callbacks+=diffclf.tasks.callbacks.PredictionWriter",
            f"--trainer.callbacks.output={out}", "--trainer.callbacks.keep_parts=true"]
    main(args)
    with pytest.raises(ValueError, match=r"holds predictions of another run \(differs in calibration\)"):
        main([*args, f"--model.init_args.calibration={cal}"])
