"""What every diffclf data module shares: the label space, indexed batches, exactly-once samplers.

Every batch is ``(images, targets, indices)``: ``indices`` are dataset indices, which seed the
classifier's draws (so predictions do not depend on batching or world size) and key the
resumable prediction files. Evaluation splits are sharded over ranks with
:class:`UnrepeatedDistributedSampler`, which — unlike Lightning's default test sampler — never
pads with repeated samples, so every image is counted exactly once. That requires
``Trainer(use_distributed_sampler=False)`` (the CLI's default); the training split then gets a
``DistributedSampler`` from here too.

The loader arguments (``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``eval_limit``,
``flip``, ``predict_split``) are declared here only: a data module takes its own arguments plus ``**kwargs`` for
``super().__init__``, and jsonargparse follows those ``**kwargs`` here, so ``--data.init_args.batch_size``
and YAML ``init_args: {batch_size: …}`` reach every data module. What differs per data set, the
default training batch and whether training images are mirrored, are the class attributes
``default_batch_size`` and ``default_flip``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from diffclf.data.label_spaces import LabelSpace
from diffclf.data.transforms import random_hflip


class DataSourceError(ValueError):
    """Data that is missing or unreadable; the message is one line that says what to do."""


PREDICT_SPLITS = ("test", "train", "val")


def stage_splits(stage: str) -> set[str]:
    """The splits Lightning needs for ``stage`` (``predict`` reads the test split)."""
    return {"fit": {"train", "val"}, "validate": {"val"}}.get(stage, {"test"})


class UnrepeatedDistributedSampler(Sampler[int]):
    """Rank ``r`` of ``w`` takes indices ``r, r+w, r+2w, …``: uneven counts, no padding, no repeats."""

    def __init__(self, length: int, num_replicas: int, rank: int) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.length, self.num_replicas, self.rank = length, num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))


class ResumableSampler(DistributedSampler):
    """The training shuffle, a function of (seed, epoch), whose next pass can start part-way through its epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip = 0  # samples of epoch `skip_epoch`'s order already trained on (set by a resume, used once)
        self.skip_epoch = 0

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())
        skip = self.skip if self.epoch == self.skip_epoch else 0  # the resumed epoch only, not the next one
        self.skip = 0
        return iter(order[skip:])


class ResumableLoader(DataLoader):
    """A training loader whose place in the epoch goes into checkpoints: Lightning saves and restores a loader's
    ``state_dict``, so a run resumed from a mid-epoch checkpoint (``every_n_train_steps``, a SLURM requeue)
    continues with the batch it stopped at, as the uninterrupted run did. Without it Lightning restarts the
    epoch's order at its first batch while the step count goes on: the epoch's first batches are trained
    twice and its last ones never."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done = 0

    def __iter__(self) -> Iterator[Any]:
        resumed = self.sampler.epoch == self.sampler.skip_epoch
        self.batches_done = self.sampler.skip // self.batch_size if resumed else 0
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches_done": int(self.batches_done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        done = int(state["batches_done"])
        if done >= len(self):  # saved at the epoch's last batch: the next epoch starts from its beginning
            return
        self.sampler.set_epoch(int(state["epoch"]))
        self.sampler.skip_epoch = int(state["epoch"])
        self.sampler.skip = done * self.batch_size


class IndexedDataset(Dataset):
    """Wraps a dataset of ``(image, target)`` into ``(image, target, index)``, flipping at random when training.

    ``subset`` restricts it to fixed positions of the base dataset; the index reported is always
    the position in the *evaluated* dataset (0..len-1), so results files key on stable numbers.
    """

    def __init__(self, base: Dataset, flip: bool = False, subset: Sequence[int] | None = None) -> None:
        self.base = base
        self.flip = flip
        self.subset = list(subset) if subset is not None else None

    def __len__(self) -> int:
        return len(self.subset) if self.subset is not None else len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        image, target = self.base[self.subset[i] if self.subset is not None else i]
        if self.flip:
            image = random_hflip(image)
        return image, int(target), i


class ClassificationDataModule(LightningDataModule):
    """Base data module: subclasses set ``name``, ``label_space``, ``image_size``, ``in_channels`` in
    ``__init__`` (the CLI links ``num_model_classes`` into the model right after construction) and
    implement :meth:`build_datasets`, returning ``(image, target)`` datasets.

    Args:
        batch_size: training batch size per device (default: the data set's ``default_batch_size``,
            128; 32 for the ImageNet family and latent caches).
        eval_batch_size: images per batch when validating, testing and predicting (default: batch_size).
        num_workers: dataloader worker processes.
        seed: seed of the training shuffle.
        eval_limit: test and predict on the first ``eval_limit`` images only (quick looks, tests);
            indices stay those of the full split.
        flip: random horizontal flips of training images, DiT's only augmentation (default: the data
            set's ``default_flip``; off for digits, whose mirror images are other symbols or none). Turn it
            off for any data where a mirrored image is another class (letters, digits, text).
        predict_split: the split ``predict`` classifies: ``test``, or ``train`` / ``val`` (never
            flipped) to fit a calibration on images that are not the test split (``diffclf calibrate``).
            ``val`` is refused where the validation images are test images (``val_split=test``).
    """

    name: str = "data"
    label_space: LabelSpace
    image_size: int
    in_channels: int
    #: ``batch_size`` when none is given.
    default_batch_size: ClassVar[int] = 128
    #: ``flip`` when none is given.
    default_flip: ClassVar[bool] = True

    def __init__(self, batch_size: int | None = None, eval_batch_size: int | None = None, num_workers: int = 0,
                 seed: int = 0, eval_limit: int | None = None, flip: bool | None = None,
                 predict_split: Literal["test", "train", "val"] = "test") -> None:
        super().__init__()
        if batch_size is None:
            batch_size = self.default_batch_size
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(f"data.eval_batch_size must be >= 1 (or null for data.batch_size), got {eval_batch_size}")
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        if eval_limit is not None and eval_limit < 1:
            raise ValueError(f"data.eval_limit must be >= 1 (or null for all images), got {eval_limit}")
        self.eval_limit = eval_limit
        self.flip = self.default_flip if flip is None else bool(flip)
        if predict_split not in PREDICT_SPLITS:
            raise ValueError(f"data.predict_split must be one of {', '.join(PREDICT_SPLITS)}, got {predict_split!r}")
        self.predict_split = predict_split
        self.skipped_images: list[str] = []
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.predict_dataset: Dataset | None = None
        self._train_sampler: Any = None

    @property
    def num_model_classes(self) -> int:
        """Classes of the model this data is for; the CLI links it to ``model.num_classes``."""
        return self.label_space.num_model_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.label_space.names)

    def build_datasets(self, stage: str) -> dict[str, Dataset]:
        """``{"train": …, "val": …, "test": …}`` as ``(image, target)`` datasets for ``stage``."""
        raise NotImplementedError

    @property
    def val_is_held_out(self) -> bool:
        """Whether the validation images are neither test images nor trained on (``val_split=train``)."""
        return getattr(self, "val_split", "train") != "test"

    def _limited(self, dataset: Dataset) -> IndexedDataset:
        limit = None if self.eval_limit is None else range(min(self.eval_limit, len(dataset)))  # type: ignore[arg-type]
        return IndexedDataset(dataset, subset=limit)

    def setup(self, stage: str) -> None:
        if stage == "predict" and self.predict_split != "test":
            self._setup_predict_split()
            return
        splits = self.build_datasets(stage)
        if "train" in splits:
            self.train_dataset = IndexedDataset(splits["train"], flip=self.flip)
        if "val" in splits:
            self.val_dataset = IndexedDataset(splits["val"])
        if "test" in splits:
            self.test_dataset = self._limited(splits["test"])
            self.predict_dataset = self.test_dataset

    def _setup_predict_split(self) -> None:
        split = self.predict_split
        if split == "val" and not self.val_is_held_out:
            raise ValueError(
                f"data.predict_split=val: the validation images of {self.name} are test images; "
                "use data.predict_split=train, or hold validation images out of training with data.val_split=train"
            )
        dataset = self.build_datasets("fit" if split == "train" else "validate").get(split)
        if dataset is None:
            raise DataSourceError(f"data.predict_split={split}: {self.name} has no {split} split")
        self.predict_dataset = self._limited(dataset)

    # ------------------------------------------------------------------ samplers
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        world, rank = trainer.world_size, trainer.global_rank
        if world > 1 and getattr(trainer._accelerator_connector, "use_distributed_sampler", False):
            raise ValueError(
                "diffclf data modules shard data themselves so that every test image is counted once: "
                "set Trainer(use_distributed_sampler=False) (the CLI does this by default)"
            )
        return world, rank

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the training split for ``epoch`` (called by the module)."""
        if isinstance(self._train_sampler, DistributedSampler):
            self._train_sampler.set_epoch(epoch)

    def _loader(self, dataset: Dataset | None, split: str, train: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{self.name}: no {split} split (setup was not called for this stage)")
        world, rank = self._world()
        kwargs: dict[str, Any] = {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
        if train:
            # A shuffle that is a function of (seed, epoch), also on one process: a resumed run sees the
            # epoch's order the uninterrupted run saw (a generator seeded once would restart at epoch 0's).
            self._train_sampler = ResumableSampler(dataset, world, rank, shuffle=True, seed=self.seed)
            kwargs["sampler"] = self._train_sampler
            return ResumableLoader(dataset, batch_size=self.batch_size,
                                   drop_last=len(dataset) >= self.batch_size * world, **kwargs)
        if world > 1:
            kwargs["sampler"] = UnrepeatedDistributedSampler(len(dataset), world, rank)
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset, "predict")
