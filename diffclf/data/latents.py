"""Train (and evaluate) on SD-VAE latents cached once by ``python cli.py cache-latents``.

The module yields latents, not pixels (``input_space = "latents"``), so the LightningModule skips
its VAE encoder; the label space travels inside the cache, so the model's class count still comes
from the data. Caches made with another VAE, resolution or crop than named here are refused.

The cache reader (:mod:`diffclf.data.latent_cache`) is imported only when a cache is opened, so that
``import diffclf.data`` does not pull in the VAE code of :mod:`diffclf.models`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from diffclf.data.base import ClassificationDataModule, DataSourceError
from diffclf.data.label_spaces import LabelSpace

if TYPE_CHECKING:
    from diffclf.data.latent_cache import LatentCacheDataset


class _Unindexed(Dataset):
    """A cache read as ``(latent, target)`` so that evaluation limits and indices work as for pixels."""

    def __init__(self, cache: LatentCacheDataset) -> None:
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        latent, target, _ = self.cache[i]
        return latent, target


class CachedLatentsDataModule(ClassificationDataModule):
    """Latent caches for training, validation and test.

    Args:
        train_cache: cache of the training split (posterior samples, random flip).
        val_cache: cache of held-out images for the validation eps-loss (posterior mean, no flip).
        test_cache: cache to classify (posterior mean, no flip).
        vae: the VAE folder the caches must have been made with (checked by fingerprint).
        image_size: pixel resolution the caches must have been made at (checked).
        crop: crop the caches must have been made with (checked when given; `adm` for ImageNet, `none` for the small datasets).
        **kwargs: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``, ``flip``: see
            :class:`ClassificationDataModule` (``batch_size`` defaults to 32).
    """

    input_space = "latents"
    default_batch_size = 32

    def __init__(
        self,
        train_cache: str | None = None,
        val_cache: str | None = None,
        test_cache: str | None = None,
        vae: str | None = None,
        image_size: int | None = None,
        crop: str | None = None,
        **kwargs: Any,
    ) -> None:
        from diffclf.data.latent_cache import read_cache_info

        super().__init__(**kwargs)
        self.caches = {"train": train_cache, "val": val_cache, "test": test_cache}
        first = next((c for c in self.caches.values() if c), None)
        if first is None:
            raise ValueError("data: give at least one of train_cache, val_cache, test_cache "
                             "(made with `python cli.py cache-latents`)")
        self.check = {"vae_path": vae, "image_size": image_size, "crop": crop}
        info = read_cache_info(first)
        meta = info.get("meta", {})
        if "names" not in meta:
            raise ValueError(f"latent cache {first}: no label space in its metadata; rebuild it with cache-latents")
        self.name = str(meta.get("dataset", "latents"))
        self.label_space = LabelSpace(
            tuple(meta["names"]),
            tuple(tuple(ids) for ids in meta.get("model_classes", [[i] for i in range(len(meta["names"]))])),
            int(meta.get("num_model_classes", len(meta["names"]))),
            str(meta.get("label_space", self.name)),
        )
        channels, side, _ = info["latent_shape"]
        self.in_channels, self.image_size = int(channels), int(side)

    def _open(self, split: str, train: bool) -> LatentCacheDataset | None:
        path = self.caches[split]
        if path is None:
            return None
        from diffclf.data.latent_cache import LatentCacheDataset

        return LatentCacheDataset(path, sample=train, flip=train and self.flip, **self.check)

    def build_datasets(self, stage: str) -> dict[str, Dataset]:
        wanted = {"fit": ("train", "val"), "validate": ("val",)}.get(stage, ("test",))
        out: dict[str, Dataset] = {}
        for split in wanted:
            cache = self._open(split, train=split == "train")
            if cache is not None:
                out[split] = _Unindexed(cache)
        if stage == "fit" and "train" not in out:
            raise ValueError("data.train_cache is needed to fit")
        if stage in ("test", "predict") and "test" not in out:
            raise ValueError(f"data.test_cache is needed to {stage}")
        return out

    def _setup_predict_split(self) -> None:
        """Predicting on the train (or val) cache reads posterior means, unflipped, like a test."""
        cache = self._open(self.predict_split, train=False)
        if cache is None:
            raise DataSourceError(f"data.predict_split={self.predict_split}: data.{self.predict_split}_cache is not set")
        self.predict_dataset = self._limited(_Unindexed(cache))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.train_dataset is not None:
            # The cache picks a random flip itself (and draws a posterior sample); no second flip.
            self.train_dataset.flip = False
