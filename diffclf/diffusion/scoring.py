"""The shared-noise ELBO scorer: per-draw denoising errors of (image, class) pairs, in plain torch.

A diffusion classifier scores class ``c`` of image ``x`` by the mean over draws ``(t_k, eps_k)`` of
``|| eps_k - eps_theta(sqrt(abar_t) x + sqrt(1 - abar_t) eps_k, t_k, c) ||`` (mean over C, H, W;
squared for ``l2``). Every class of one image is scored on the *same* draws, so comparisons
between classes are paired and most of the noise cancels.

Design choices and why:

- **Draws depend only on ``(seed, dataset index)``** (or only on ``seed`` with ``noise="shared"``,
  the DiT paper's fixed bank). Each draw ``k`` of image ``i`` has its own CPU generator seeded from
  ``(seed, i, k)``, so a draw never depends on the batch it came in, the device, the order of
  calls, or which other draws were asked for: predictions are identical for batch size 1 and 64,
  across ranks and across restarts, and a strategy can score draws ``[50, 100)`` without
  generating ``[0, 50)`` again.
- **Draw order spreads every prefix over the whole timestep range.** Strategies score prefixes of
  the ``max_draws`` draws (successive elimination scores the first 50, then the first 100, ...).
  If the grid were visited in ascending order, the first 50 of 500 draws would all lie in the
  lowest tenth of ``[0, T)``, where the classes are hardly distinguishable. The grid positions
  (or strata) are therefore visited in bit-reversed (van der Corput) order: the first ``2^j``
  draws are an even sub-grid, and any prefix of length ``m`` leaves no gap wider than four times
  ``(hi - lo) / m`` (under three in practice; tests/test_scoring.py checks it). Scoring all ``n``
  draws uses exactly the reference grid ``t = lo + (hi-lo)//n//2 + k*(hi-lo)//n`` when ``n``
  divides ``hi - lo`` (see :func:`even_grid`). A strategy with a schedule of its own (``Adaptive`` in
  ``official`` mode: each stage an even sub-grid) gives the scorer its ``order`` of grid positions instead.
- **One flat loop over (image, class, draw) triples** in chunks of ``batch_size``: the denoiser
  always sees full batches whatever the mix of images and surviving classes. ``x_t`` is built by
  gathering inside the chunk; all indices are made once per call and nothing is copied to the
  host inside the loop. Errors are computed and stored in fp32 even when the denoiser runs under
  bf16 autocast.
- **Mirrored views (optional)**: a model trained with random horizontal flips models ``x`` and its
  mirror image alike, so both are views of one likelihood. With ``flip_views`` a draw sees the
  mirror image when its grid position has an odd number of set bits (Thue-Morse): neighbouring
  positions ``2i`` and ``2i+1`` always differ, so both views cover the timestep range evenly, and as
  the draw order is bit-reversed (which keeps the set bits), every prefix of draws is split in half
  to within two draws (with a strategy's own ``order``, the view follows the draw index ``k`` instead,
  which splits every run of consecutive draws, such as a stage, likewise). It costs nothing (the same
  number of forwards) and averages the model's own error over the two views; classes stay paired because a
  draw's view, like its ``(t, eps)``, is the same for every class.
- **Antithetic noise (optional)**: with ``antithetic`` draw ``2m + 1`` takes ``-eps`` of draw ``2m`` at the
  neighbouring grid position (same view), the pairs visited in the spread order. For a fixed ``x`` and ``t`` the
  denoising error is far from odd in ``eps``, yet the decisive class difference of a pair's halves correlates
  negatively (-0.36 for Fashion-MNIST, ``benchmarks/results/error_control/antithetic_fashion.md``): a pair's mean
  has less variance than two independent draws' (Hammersley & Morton 1956). All draws still cover the same grid;
  strategies that estimate a standard error treat a pair as one unit.
- **Results live in a** :class:`ScoreTable` holding every per-draw error (NaN where not scored):
  the paired t-test needs classes paired on the same draws, and sums, squared sums and counts
  (what any strategy needs to continue a table later) are derived from it deterministically,
  never accumulated with atomics whose order could change the last bits.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from diffclf.diffusion.precision import resolve_precision
from diffclf.diffusion.schedule import NoiseSchedule

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]

DESIGNS = ("even", "stratified", "uniform")
NOISES = ("per_image", "shared")
ERRORS = ("l2", "l1")
WEIGHTINGS = ("none", "exp", "velocity")

_MASK64 = (1 << 64) - 1
_STREAM_T = 1
_STREAM_EPS = 2
_SHARED_KEY = -1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser over each part): decorrelates nearby keys."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & _MASK64)) & _MASK64
        h = (h * 0xBF58476D1CE4E5B9) & _MASK64
        h ^= h >> 27
        h = (h * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def digit_sum(n: int, base: int) -> int:
    """Sum of the base-``base`` digits of ``n`` (``base`` 1: 0). Base 2 is the bit count of the Thue-Morse views:
    ``base`` consecutive numbers from a multiple of ``base`` have consecutive digit sums, so their sums mod ``base``
    are all different."""
    total = 0
    while base > 1 and n:
        n, digit = divmod(n, base)
        total += digit
    return total


def spread_order(n: int) -> list[int]:
    """Positions ``0..n-1`` in bit-reversed (van der Corput) order, so every prefix covers the range."""
    if n < 1:
        raise ValueError(f"need n >= 1 positions, got {n}")
    bits = max(1, (n - 1).bit_length())
    rev = (int(format(k, f"0{bits}b")[::-1], 2) for k in range(1 << bits))
    return [r for r in rev if r < n]


def antithetic_order(n: int) -> list[int]:
    """Grid positions in antithetic pairs: draws ``2m`` and ``2m + 1`` at neighbouring positions ``2p, 2p + 1``,
    the pairs in :func:`spread_order` (an odd ``n`` ends with the unpaired last position), so every even prefix
    holds whole pairs spread over the range."""
    if n < 1:
        raise ValueError(f"need n >= 1 positions, got {n}")
    out = [q for p in (spread_order(n // 2) if n >= 2 else []) for q in (2 * p, 2 * p + 1)]
    return out + [n - 1] if n % 2 else out


def even_grid(n: int, lo: int, hi: int) -> list[int]:
    """``n`` evenly spaced timesteps over ``[lo, hi)``, ascending: ``lo + (2k+1)(hi-lo) // (2n)``.

    Whenever ``n`` divides ``hi - lo`` (250, 100, 500, 1000 ... of 1000 steps) this is exactly the
    Diffusion Classifier grid ``lo + (hi-lo)//n//2 + k*(hi-lo)//n``. For other ``n`` the reference
    formula crowds the grid into the low end (513 draws of 1000 steps become t = 0..512, and more
    draws than steps collapse onto one t); the centred form keeps covering the whole range, each
    timestep about ``n/(hi-lo)`` times (with different noise) when ``n > hi - lo``.
    """
    return [lo + ((2 * k + 1) * (hi - lo)) // (2 * n) for k in range(n)]


@dataclass
class ScoreTable:
    """Per-draw errors of each image's candidate classes.

    Attributes:
        candidates: ``(B, M)`` long model class ids scored for each image.
        errors: ``(B, M, max_draws)`` fp32 error of each candidate on each draw; NaN where not scored.
        forwards: ``(B,)`` long denoiser evaluations spent on each image.
        horizon: draws ``[0, horizon)`` hold every scored entry (bounds the reductions).
    """

    candidates: Tensor
    errors: Tensor
    forwards: Tensor
    horizon: int = 0

    def _scored(self) -> Tensor:
        return self.errors[:, :, : max(self.horizon, 1)]

    @property
    def counts(self) -> Tensor:
        """``(B, M)`` long: draws scored for each candidate."""
        return (~torch.isnan(self._scored())).sum(dim=-1)

    def sums(self) -> Tensor:
        """``(B, M)`` fp32 sum of the scored errors (0 where none)."""
        return torch.nansum(self._scored(), dim=-1)

    def sq_sums(self) -> Tensor:
        """``(B, M)`` fp32 sum of the squared scored errors (0 where none)."""
        return torch.nansum(self._scored().square(), dim=-1)

    def mean_error(self) -> Tensor:
        """``(B, M)`` fp32 mean scored error; NaN where nothing was scored."""
        counts, sums = self.counts, self.sums()
        return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, math.nan))


@dataclass(frozen=True)
class ScoringOptions:
    """How a diffusion classifier makes and scores its draws: one typed group of options.

    A task takes it as one argument (``model.init_args.scoring`` in YAML, ``--model.init_args.scoring.error
    l1`` on the command line) instead of a dozen flat constructor arguments, and every conditioning kind
    (class ids, prompt embeddings) reuses it. Fields are those of :class:`Scorer` plus how the denoiser
    runs and how errors become probabilities.

    Attributes:
        design: timesteps ``even`` (reference grid), ``stratified`` (one uniform draw per stratum) or
            ``uniform`` (iid), over ``t_range``.
        noise: ``per_image`` draws from ``(seed, index)``; ``shared`` one bank from ``seed`` (DiT paper).
        error: ``l2`` (mean squared) or ``l1`` (mean absolute) over C, H, W.
        weighting: ``none`` (the eps error), ``exp``: Clark & Jaini's x0-space ``exp(-rate t/T)``, or
            ``velocity``: the error of the velocity ``v = a_t eps - b_t x0`` (rectified flow: ``eps - x0``).
        weight_rate: the ``rate`` of ``exp`` weighting.
        t_range: ``(lo, hi)`` narrows the timesteps to ``[lo, hi)`` (default ``[0, T)``).
        flip_views: half of the draws see the image mirrored left-right (models trained with flips only).
        antithetic: draws come in pairs ``(eps, -eps)`` at neighbouring timesteps (see :class:`Scorer`).
        batch_size: denoiser evaluations per forward.
        precision: ``bf16`` runs the denoiser under autocast (errors accumulate in fp32); ``auto`` chooses
            bf16 on a device with native bf16 and fp32 elsewhere (:mod:`diffclf.diffusion.precision`).
        compile: run the denoiser through ``torch.compile`` with its weights frozen into the compiled code
            (:mod:`diffclf.diffusion.compiled`; recompiled when the weights change). With bf16 on a CPU
            with AMX it is what takes diffclf past twice the official loop at the same schedule; compiling
            costs seconds per batch shape, so it pays back over a run, not over a handful of images.
        temperature: ``p(c|x) = softmax(-err_c / temperature)``.
        recheck: with a reduced precision, the two best classes of every image whose relative margin (runner-up
            minus winner mean error on the draws they share, over the winner's) is below this are scored again
            in fp32 on those draws, and the fp32 order decides (:mod:`diffclf.strategies.recheck`); fit it on
            training images (``benchmarks/precision.py --fit_limit``). 0: off. Ignored in fp32.
    """

    design: Literal["even", "stratified", "uniform"] = "even"
    noise: Literal["per_image", "shared"] = "per_image"
    error: Literal["l2", "l1"] = "l2"
    weighting: Literal["none", "exp", "velocity"] = "none"
    weight_rate: float = 7.0
    t_range: tuple[int, int] | None = None
    flip_views: bool = False
    antithetic: bool = False
    batch_size: int = 512
    precision: Literal["32", "bf16", "auto"] = "32"
    compile: bool = False
    temperature: float = 1.0
    recheck: float = 0.0

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"scoring.temperature must be a finite number > 0, got {self.temperature}")
        if not (self.recheck >= 0 and math.isfinite(self.recheck)):
            raise ValueError(f"scoring.recheck must be a finite relative margin >= 0 (0: off), got {self.recheck}")
        if self.precision not in ("32", "bf16", "auto"):
            raise ValueError(f"scoring.precision must be '32', 'bf16' or 'auto', got {self.precision!r}")

    def scorer_kwargs(self, device: torch.device | str = "cpu", antithetic: bool = False) -> dict[str, object]:
        """The :class:`Scorer` keyword arguments these options set for a denoiser on ``device`` (``antithetic``:
        the strategy asks for antithetic pairs, whatever these options say)."""
        precision, _ = resolve_precision(self.precision, device)
        return {
            "design": self.design, "noise": self.noise, "error": self.error, "weighting": self.weighting,
            "weight_rate": self.weight_rate, "t_range": self.t_range, "flip_views": self.flip_views,
            "antithetic": self.antithetic or antithetic, "batch_size": self.batch_size,
            "autocast_dtype": torch.bfloat16 if precision == "bf16" else None,
        }

    def record(self, device: torch.device | str = "cpu", antithetic: bool = False) -> dict[str, object]:
        """The options that can change a result, as stored in results records and prediction manifests
        (``batch_size`` cannot: draws do not depend on batching). ``precision`` is the one that ran on
        ``device``; ``auto`` adds ``precision_auto``, the reason for the choice; ``antithetic`` as in
        :meth:`scorer_kwargs`."""
        precision, why = resolve_precision(self.precision, device)
        out: dict[str, object] = {
            "design": self.design, "noise": self.noise, "error": self.error, "weighting": self.weighting,
            "weight_rate": self.weight_rate, "t_range": self.t_range, "flip_views": self.flip_views,
            "precision": precision, "compile": self.compile, "temperature": self.temperature,
        }
        if self.antithetic or antithetic:  # only when on: records written before the option still compare equal
            out["antithetic"] = True
        if self.recheck > 0 and precision != "32":  # likewise, and only where it runs
            out["recheck"] = self.recheck
        if why is not None:
            out["precision_auto"] = why
        return out


class Scorer:
    """Scores (image, candidate class) pairs on deterministic draws with one denoiser.

    Args:
        denoise: ``denoise(x_t, t, y) -> (N, C_out, H, W)``; with ``C_out > in_channels`` (learned
            sigma) only the first ``in_channels`` channels are the eps prediction.
        schedule: the noise schedule the denoiser was trained with.
        in_channels: channels of ``x`` (pixels or latents).
        max_draws: draws available per image; strategies score prefixes of them.
        design: timesteps ``even`` (reference grid), ``stratified`` (one uniform draw per stratum)
            or ``uniform`` (iid), over ``t_range`` (default ``[0, T)``).
        noise: ``per_image`` draws from ``(seed, index)``; ``shared`` one bank from ``seed`` (DiT paper).
        error: ``l2`` (mean squared) or ``l1`` (mean absolute) over C, H, W.
        weighting: ``none``, or ``exp``: Clark & Jaini's ``exp(-rate t/T)`` on the x0-space error. As
            ``x0 - x0_hat = (eps_hat - eps) / sqrt(SNR(t))``, that is ``exp(-rate t/T) / SNR(t)`` on the
            squared (``l2``) eps error and ``exp(-rate t/T) / sqrt(SNR(t))`` on the absolute (``l1``) one.
            ``velocity``: the error of the velocity ``v = a_t eps - b_t x0`` of a path ``x_t = a_t x0 + b_t eps``
            (``v - v_hat = (eps - eps_hat) / a_t`` for both DDPM's v and rectified flow's ``eps - x0``), i.e.
            ``1 / a_t^2`` on the squared error and ``1 / a_t`` on the absolute one (0 where ``a_t = 0``).
        weight_rate: the ``rate`` of ``exp`` weighting.
        t_range: ``(lo, hi)`` narrows the timesteps to ``[lo, hi)``.
        flip_views: half of the draws see the image mirrored left-right (only for models trained
            with horizontal flips; see the module docstring).
        batch_size: denoiser evaluations per forward.
        autocast_dtype: run the denoiser under ``torch.autocast`` with this dtype (errors stay fp32).
        seed: the draws depend only on this seed and the dataset index.
        num_classes: classes of the denoiser (default: its ``num_classes`` attribute).
        order: the positions ``0..max_draws-1`` of the ``max_draws``-point grid (or strata) in draw
            order, a permutation (default: :func:`spread_order`, bit-reversed). A strategy with its own
            schedule gives it (:attr:`~diffclf.strategies.Strategy.draw_order`, e.g. ``Adaptive`` in
            ``official`` mode). Draw ``k`` then lies at grid position (``even``) or in stratum
            (``stratified``) ``order[k]``; its noise stays that of ``(seed, index, k)``; ``uniform``
            timesteps ignore the order. With ``flip_views`` a draw of a custom order sees the mirror
            image when ``k`` (not its position) has an odd number of set bits: every run of consecutive
            draws is split in half to within two draws, so each stage is, and as a stage's timesteps
            ascend with ``k``, so is every stretch of them.
        variants: conditionings per candidate (prompt templates scored in error space): draw ``k`` of
            candidate ``c`` is conditioned on row ``c * variants + v(k)`` of the denoiser's table, so the mean over
            draws averages the variants' errors at no extra cost, and every candidate of an image sees the same
            variant on the same draw (still a paired comparison). ``v(k)`` is the sum of the base-``variants``
            digits, mod ``variants``, of the key the views use (the grid position in the default order, the draw
            index in a strategy's own): every ``variants`` neighbouring grid positions (or consecutive draws of a
            stage) take every variant once, so each variant covers the whole timestep range. ``k % variants``
            would tie a variant to a part of it: in the default bit-reversed order draw ``k``'s parity is its
            position's top bit, so with two templates one saw only ``t < T/2``. With two variants and
            ``flip_views`` the variant and the view coincide (both are the key's bit parity).
        noise_bank: ``(n, C, H, W)`` noise, draw ``k`` = row ``k`` for every image (the official
            Diffusion Classifier's ``--noise_path`` file), instead of drawing it from the seed.
        antithetic: draw ``2m + 1`` has the noise ``-eps`` of draw ``2m`` and the neighbouring grid position (or
            stratum), and the same view; the pairs follow :func:`antithetic_order`. Needs the ``even`` or
            ``stratified`` design, the default order and the scorer's own noise (no ``noise_bank``).
    """

    def __init__(
        self,
        denoise: Denoiser,
        schedule: NoiseSchedule,
        in_channels: int,
        *,
        max_draws: int,
        design: Literal["even", "stratified", "uniform"] = "even",
        noise: Literal["per_image", "shared"] = "per_image",
        error: Literal["l2", "l1"] = "l2",
        weighting: Literal["none", "exp"] = "none",
        weight_rate: float = 7.0,
        t_range: tuple[int, int] | None = None,
        flip_views: bool = False,
        batch_size: int = 512,
        autocast_dtype: torch.dtype | None = None,
        seed: int = 0,
        num_classes: int | None = None,
        order: list[int] | None = None,
        variants: int = 1,
        noise_bank: Tensor | None = None,
        antithetic: bool = False,
    ) -> None:
        for name, value, allowed in (
            ("design", design, DESIGNS),
            ("noise", noise, NOISES),
            ("error", error, ERRORS),
            ("weighting", weighting, WEIGHTINGS),
        ):
            if value not in allowed:
                raise ValueError(f"scoring {name} must be one of {', '.join(allowed)}; got {value!r}")
        if max_draws < 1:
            raise ValueError(f"max_draws must be >= 1, got {max_draws}")
        if batch_size < 1:
            raise ValueError(f"score batch_size must be >= 1, got {batch_size}")
        T = schedule.num_timesteps
        lo, hi = (0, T) if t_range is None else (int(t_range[0]), int(t_range[1]))
        if not 0 <= lo < hi <= T:
            raise ValueError(f"t_range must satisfy 0 <= lo < hi <= {T}, got ({lo}, {hi})")
        if num_classes is None:
            num_classes = getattr(denoise, "num_classes", None)
        if num_classes is None or int(num_classes) < 1:
            raise ValueError(
                "Scorer needs num_classes (pass it, or give the denoiser a num_classes attribute)"
            )
        self.denoise = denoise
        self.schedule = schedule
        self.in_channels = int(in_channels)
        self.max_draws = int(max_draws)
        self.design = design
        self.noise_mode = noise
        self.error = error
        self.weighting = weighting
        self.weight_rate = float(weight_rate)
        self.t_range = (lo, hi)
        self.batch_size = int(batch_size)
        self.autocast_dtype = autocast_dtype
        self.seed = int(seed)
        self.num_classes = int(num_classes)
        if variants < 1:
            raise ValueError(f"variants must be >= 1, got {variants}")
        self.variants = int(variants)
        if noise_bank is not None:
            if noise_bank.dim() != 4 or noise_bank.shape[0] < self.max_draws:
                raise ValueError(
                    f"the noise bank must be (n >= {self.max_draws} draws, C, H, W), got {tuple(noise_bank.shape)}"
                )
            noise_bank = noise_bank.detach().float().cpu()
        self.noise_bank = noise_bank
        self.antithetic = bool(antithetic)
        if self.antithetic and (design == "uniform" or noise_bank is not None):
            raise ValueError(
                "antithetic noise pairs neighbouring timesteps of the scorer's own draws: it needs design even or "
                f"stratified (got {design}) and no noise bank"
            )
        default = antithetic_order(self.max_draws) if self.antithetic else spread_order(self.max_draws)
        if self.antithetic and order is not None and [int(p) for p in order] != default:
            raise ValueError(
                "antithetic noise needs the scorer's own pair order; a strategy with its own draw order "
                "(adaptive, schedule official) scores without antithetic"
            )
        if order is None:
            order = default
        else:
            order = [int(p) for p in order]
            if sorted(order) != list(range(self.max_draws)):
                raise ValueError(
                    f"the scorer's draw order must be a permutation of range(max_draws={self.max_draws}), "
                    f"got {len(order)} positions"
                    + (f" from {min(order)} to {max(order)}" if order else "")
                )
        self.order: tuple[int, ...] = tuple(order)
        self._default_order = self.order == tuple(default)
        self._order = torch.tensor(order, dtype=torch.long)
        self._grid = torch.tensor(even_grid(self.max_draws, lo, hi), dtype=torch.long)[self._order]
        self.flip_views = bool(flip_views)
        # Thue-Morse views: of the grid position in the default order (whose bit reversal keeps the set
        # bits), of the draw index in a strategy's own order (its stages are runs of consecutive draws).
        # Antithetic partners share their view: the key is the pair's position.
        keys = self._order.tolist() if self._default_order else range(self.max_draws)
        if self.antithetic:
            keys = [p // 2 for p in keys]
        self._mirrored = torch.tensor([p.bit_count() % 2 == 1 for p in keys])
        self._variant = torch.tensor([digit_sum(p, self.variants) % self.variants for p in keys], dtype=torch.long)
        self._shared_t = self._draw_t(_SHARED_KEY) if noise == "shared" else None
        self._last_device: torch.device | None = None
        self._views: tuple[Tensor, Tensor] | None = None
        self._device_tables: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    def serves(self, max_draws: int, order: list[int] | None, antithetic: bool, device: torch.device) -> bool:
        """Whether a strategy with these draws, draw order and noise pairing can score with this scorer on
        ``device`` (the tasks rebuild their scorer when not)."""
        return (
            self.max_draws == max_draws and self.has_order(order) and self.antithetic == antithetic
            and self.device == device
        )

    def has_order(self, order: list[int] | None) -> bool:
        """Whether draw ``k`` lies at grid position ``order[k]`` (None: the default :func:`spread_order`)."""
        if order is None:
            return self._default_order
        return self.order == tuple(int(p) for p in order)

    # ------------------------------------------------------------------ where it runs
    @property
    def device(self) -> torch.device:
        """Where the denoiser's parameters live (also for a bound method of a module), else where
        the scorer last ran (CPU before its first call)."""
        owner = (
            self.denoise if isinstance(self.denoise, nn.Module) else getattr(self.denoise, "__self__", None)
        )
        if isinstance(owner, nn.Module):
            for p in owner.parameters():
                return p.device
        return self._last_device if self._last_device is not None else torch.device("cpu")

    def _tables(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """``sqrt(abar)``, ``sqrt(1 - abar)`` and per-timestep error weights, fp32 on ``device`` (cached)."""
        if device not in self._device_tables:
            s = self.schedule
            if self.weighting == "exp":
                t = torch.arange(s.num_timesteps, dtype=torch.float64)
                snr = s.alphas_cumprod / (1.0 - s.alphas_cumprod)
                # The eps error in x0 units: |x0 - x0_hat| = |eps - eps_hat| / sqrt(SNR) (DDPM eq. 15 inverted).
                scale = snr if self.error == "l2" else snr.sqrt()
                # At SNR 0 (SD3's sigma = 1, x_t = eps) eps_hat = x_t exactly, so the eps error is 0 for every class
                # and says nothing; weight 0 there, as velocity does, not 0 * inf = NaN (a draw silently unscored).
                weights = torch.where(snr > 0, torch.exp(-self.weight_rate * t / s.num_timesteps) / scale.clamp(min=1e-300),
                                      torch.zeros_like(snr))
            elif self.weighting == "velocity":
                # v - v_hat = (eps - eps_hat) / a_t for x_t = a_t x0 + b_t eps with v = a_t eps - b_t x0 (VP) or
                # v = eps - x0 (rectified flow, a_t + b_t = 1); a_t = 0 (pure noise) carries no information.
                a = s.sqrt_alphas_cumprod
                scale = a.square() if self.error == "l2" else a
                weights = torch.where(a > 0, 1.0 / scale.clamp(min=1e-300), torch.zeros_like(a))
            else:
                weights = torch.ones(s.num_timesteps, dtype=torch.float64)
            self._device_tables[device] = tuple(
                v.to(device=device, dtype=torch.float32)
                for v in (s.sqrt_alphas_cumprod, s.sqrt_one_minus_alphas_cumprod, weights)
            )
        return self._device_tables[device]

    def weights(self) -> Tensor:
        """``(T,)`` fp32 factor each timestep's error is multiplied by (ones without weighting)."""
        return self._tables(torch.device("cpu"))[2]

    # ------------------------------------------------------------------ the draws
    def _draw_t(self, key: int) -> Tensor:
        """All ``max_draws`` timesteps for one key (a dataset index, or the shared bank), in draw order."""
        if self.design == "even":
            return self._grid
        lo, hi = self.t_range
        gen = torch.Generator().manual_seed(mix_seed(self.seed, key, _STREAM_T))
        u = torch.rand(self.max_draws, generator=gen, dtype=torch.float64)
        if self.design == "stratified":
            pos = (self._order.double() + u) * (hi - lo) / self.max_draws
        else:
            pos = u * (hi - lo)
        return (lo + pos.floor().long()).clamp(lo, hi - 1)

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.max_draws:
            raise ValueError(
                f"draws [{start}, {stop}) outside the scorer's [0, {self.max_draws}) (max_draws)"
            )

    def timesteps(self, index: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """``(B, stop-start)`` long CPU timesteps of draws ``[start, stop)`` of each dataset index."""
        stop = self.max_draws if stop is None else stop
        self._check_range(start, stop)
        keys = [_SHARED_KEY] * len(index) if self.noise_mode == "shared" else [int(i) for i in index.tolist()]
        if self.design == "even" or self.noise_mode == "shared":
            row = self._grid if self.design == "even" else self._shared_t
            return row[start:stop].unsqueeze(0).expand(len(keys), -1).clone()
        if not keys:
            return torch.empty(0, stop - start, dtype=torch.long)
        return torch.stack([self._draw_t(k)[start:stop] for k in keys])

    def _draw_eps(self, key: int, start: int, stop: int, shape: tuple[int, ...], out: Tensor) -> None:
        gen = torch.Generator()
        for j, k in enumerate(range(start, stop)):
            partner = self.antithetic and k % 2 == 1  # -eps of draw k - 1
            gen.manual_seed(mix_seed(self.seed, key, k - 1 if partner else k, _STREAM_EPS))
            torch.randn(shape, generator=gen, out=out[j])
            if partner:
                out[j].neg_()

    def noise(self, index: Tensor, start: int, stop: int, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """``(B, stop-start, *shape)`` fp32 CPU noise of draws ``[start, stop)`` of each dataset index."""
        self._check_range(start, stop)
        shape = tuple(shape)
        if self.noise_bank is not None:
            if tuple(self.noise_bank.shape[1:]) != shape:
                raise ValueError(
                    f"the noise bank's draws are {tuple(self.noise_bank.shape[1:])} but the inputs are {shape}"
                )
            return self.noise_bank[start:stop].unsqueeze(0).expand(len(index), -1, *shape).clone()
        if self.noise_mode == "shared":
            bank = torch.empty(stop - start, *shape)
            self._draw_eps(_SHARED_KEY, start, stop, shape, bank)
            return bank.unsqueeze(0).expand(len(index), *bank.shape).clone()
        out = torch.empty(len(index), stop - start, *shape)
        for row, i in enumerate(index.tolist()):
            self._draw_eps(int(i), start, stop, shape, out[row])
        return out

    def mirrored(self, start: int = 0, stop: int | None = None) -> Tensor:
        """``(stop-start,)`` bool: which of draws ``[start, stop)`` see the mirrored image (none without
        ``flip_views``)."""
        stop = self.max_draws if stop is None else stop
        self._check_range(start, stop)
        views = self._mirrored[start:stop]
        return views if self.flip_views else torch.zeros_like(views)

    # ------------------------------------------------------------------ tables
    def check_candidates(self, candidates: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """Candidates as a ``(B, M)`` long tensor on ``device``; rejects ids outside the model's classes."""
        if candidates is None:
            cand = torch.arange(self.num_classes, device=device)
        else:
            cand = torch.as_tensor(candidates, device=device)
            if cand.dtype.is_floating_point or cand.dtype == torch.bool:
                raise ValueError(f"candidates must be integer class ids, got dtype {cand.dtype}")
            cand = cand.long()
        if cand.dim() == 1:
            cand = cand.unsqueeze(0).expand(batch, -1)
        if cand.dim() != 2 or cand.shape[0] != batch or cand.shape[1] == 0:
            raise ValueError(
                f"candidates must be (M,) or (B={batch}, M) with M >= 1, got shape {tuple(cand.shape)}"
            )
        lo, hi = (int(v) for v in torch.stack([cand.min(), cand.max()]).tolist())
        if lo < 0 or hi >= self.num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"candidate class id {bad} is outside the model's classes [0, {self.num_classes})"
            )
        return cand.contiguous()

    def new_table(self, x: Tensor, candidates: Tensor | None = None) -> ScoreTable:
        """An empty table for ``x``'s images over ``candidates`` (``(M,)``, ``(B, M)``, None = all)."""
        cand = self.check_candidates(candidates, x.shape[0], x.device)
        B, M = cand.shape
        return ScoreTable(
            candidates=cand,
            errors=torch.full((B, M, self.max_draws), math.nan, dtype=torch.float32, device=x.device),
            forwards=torch.zeros(B, dtype=torch.long, device=x.device),
        )

    # ------------------------------------------------------------------ the engine
    @torch.no_grad()
    @contextlib.contextmanager
    def mirrored_views(self, x: Tensor, x_mirror: Tensor) -> Iterator[None]:
        """Within the block, ``flip_views`` draws of ``x`` see ``x_mirror`` instead of ``x.flip(-1)``.

        For latent models: the mirror image's latents are the encoding of the mirrored pixels, not the
        mirrored latents (an SD-VAE is not flip-equivariant, and training saw encoded mirror images).
        Bound to this very tensor ``x`` (the strategies pass it through unchanged), so another batch
        can never pick up these views.
        """
        if x_mirror.shape != x.shape:
            raise ValueError(f"mirrored views {tuple(x_mirror.shape)} do not match the inputs {tuple(x.shape)}")
        previous, self._views = self._views, (x, x_mirror)
        try:
            yield
        finally:
            self._views = previous

    @contextlib.contextmanager
    def full_precision(self) -> Iterator[None]:
        """Within the block the denoiser runs without autocast (fp32): the same draws, re-scored exactly."""
        previous, self.autocast_dtype = self.autocast_dtype, None
        try:
            yield
        finally:
            self.autocast_dtype = previous

    def _mirror_of(self, x: Tensor) -> Tensor:
        if self._views is not None and self._views[0] is x:
            return self._views[1].to(x.device)
        return x.flip(-1)

    def score(
        self, table: ScoreTable, x: Tensor, index: Tensor, start: int, stop: int, active: Tensor | None = None
    ) -> int:
        """Score draws ``[start, stop)`` of every active (image, candidate) pair into ``table``.

        ``x`` ``(B, C, H, W)`` is what the denoiser sees; ``index`` ``(B,)`` the dataset indices that
        fix the draws; ``active`` ``(B, M)`` bool selects pairs (default all). Returns the denoiser
        evaluations spent (also added to ``table.forwards`` per image).
        """
        self._check_range(start, stop)
        B, M = table.candidates.shape
        if x.shape[0] != B or index.shape != (B,):
            raise ValueError(
                f"x {tuple(x.shape)} and index {tuple(index.shape)} do not match the table's {B} images"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels but the scorer was built for {self.in_channels}")
        device = x.device
        self._last_device = device
        if active is None:
            active = torch.ones(B, M, dtype=torch.bool, device=device)
        D = stop - start
        pairs = active.nonzero().cpu()  # host syncs happen here, once per call, never in the loop
        P = pairs.shape[0]
        if P == 0 or D == 0:
            return 0
        # Draws only for the images that have an active pair; rows of eps/t follow `used`.
        used = sorted(set(pairs[:, 0].tolist()))
        row_of = torch.full((B,), -1, dtype=torch.long)
        row_of[used] = torch.arange(len(used))
        used_index = index.cpu()[used]
        shape = tuple(x.shape[1:])
        shared = self.noise_mode == "shared" or self.noise_bank is not None
        eps = (
            self.noise(used_index[:1], start, stop, shape)[0]
            if shared
            else self.noise(used_index, start, stop, shape)
        )
        t_rows = self.timesteps(used_index, start, stop)
        eps = eps.to(device)
        t_rows = t_rows.to(device)
        pair_b = pairs[:, 0].to(device)
        pair_m = pairs[:, 1].to(device)
        pair_r = row_of[pairs[:, 0]].to(device)
        sqrt_ab, sqrt_1mab, weights = self._tables(device)
        xf = x.float()
        mirrored = self.mirrored(start, stop).to(device) if self.flip_views else None
        variant = self._variant[start:stop].to(device) if self.variants > 1 else None
        x_mirror = self._mirror_of(x).float() if self.flip_views else None
        cand = table.candidates
        errors = table.errors
        C = self.in_channels
        autocast = (
            torch.autocast(device_type=device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        total = P * D
        offsets = torch.arange(min(self.batch_size, total), device=device)
        for s in range(0, total, self.batch_size):
            n = offsets[: min(self.batch_size, total - s)] + s
            p, k = n // D, n % D
            b, m, r = pair_b[p], pair_m[p], pair_r[p]
            t = t_rows[r, k]
            e = eps[k] if shared else eps[r, k]
            x0 = xf[b] if mirrored is None else torch.where(mirrored[k].view(-1, 1, 1, 1), x_mirror[b], xf[b])
            x_t = sqrt_ab[t].view(-1, 1, 1, 1) * x0 + sqrt_1mab[t].view(-1, 1, 1, 1) * e
            y = cand[b, m] if self.variants == 1 else cand[b, m] * self.variants + variant[k]
            with autocast:
                out = self.denoise(x_t, t, y)
            if out.shape[1] < C:
                raise ValueError(f"the denoiser returned {out.shape[1]} channels, fewer than in_channels={C}")
            diff = out[:, :C].float() - e
            err = diff.square().mean(dim=(1, 2, 3)) if self.error == "l2" else diff.abs().mean(dim=(1, 2, 3))
            if self.weighting != "none":
                err = err * weights[t]
            errors[b, m, k + start] = err
        table.forwards += active.sum(dim=1) * D
        table.horizon = max(table.horizon, stop)
        return total
