"""Checkpointing that keeps the weights a run ends with.

Lightning's ``ModelCheckpoint`` writes ``last.ckpt`` only together with a periodic save, so a run whose
``max_steps`` is not a multiple of ``every_n_train_steps`` ends with a ``last.ckpt`` from the previous
save: a 13,000-step Fashion-MNIST run saving every 2,000 steps left step 12,000 there, and ``publish`` and
``test --ckpt_path .../last.ckpt`` would have used weights 1,000 steps old without a word.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint


class ModelCheckpoint(_LightningModelCheckpoint):
    """``lightning.pytorch.callbacks.ModelCheckpoint`` that also writes ``last`` at the end of training.

    Same arguments and files; with ``save_last`` the final step is saved when training stops (``max_steps``,
    ``max_epochs``, early stopping) between two periodic saves.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and not trainer.fast_dev_run and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
