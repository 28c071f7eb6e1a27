"""The timm task: any timm classifier as a discriminative baseline on diffclf's data modules.

Trained with cross-entropy on the same data modules (and the same flip-only augmentation) as the
DiTs, and tested exactly like the diffusion classifier: logits restricted to the data's label space
(a label-space class takes the best logit of its model classes), the same metrics, the same results
records (``kind="discriminative"``), so the report can fit the effective-robustness baseline on them.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from diffclf.data.label_spaces import label_space_logits, label_space_scores
from diffclf.models.classifiers import ImageClassifier, create_classifier
from diffclf.tasks.base import Batch, ClassifierTask, Scored, check_ci_level


class TimmClassifier(ClassifierTask):
    """A timm classifier trained and tested on diffclf data (images in [-1, 1]).

    Args:
        model_name: timm model name (``resnet18``, ``vit_tiny_patch16_224``, ...).
        num_classes: model classes; the CLI links it to the data's ``num_model_classes``.
        in_chans, img_size: input the network is built for (ViTs need ``img_size``).
        pretrained_file: local timm weights to start from (inputs are then normalised as the weights
            expect); without it the network is trained from scratch on [-1, 1] inputs.
        model_kwargs: further ``timm.create_model`` arguments (``drop_path_rate``, ``patch_size``, ...).
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9, Nesterov).
        lr, weight_decay: optimiser settings.
        schedule: ``cosine`` anneals to 0 over all training steps; ``constant`` keeps ``lr``.
        label_smoothing: cross-entropy label smoothing.
        ci_level: level of the Clopper-Pearson interval reported by ``test``.
        results_dir: where ``test`` writes ``results.json`` (default: the logger's directory).
        results_file: a JSON Lines file every ``test`` run appends one record to.
        label: the name the report gives this model (default: ``model_name``).
        calibration: a calibration file from ``diffclf calibrate`` (a temperature fitted on non-test
            images) that maps the logits to ``p(c|x)``; without it ``p(c|x)`` is their softmax.
    """

    weight_hparams: ClassVar[frozenset[str]] = frozenset({"model_name", "num_classes", "in_chans", "img_size", "model_kwargs"})
    kind: ClassVar[str] = "discriminative"

    def __init__(
        self,
        model_name: str = "resnet18",
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int = 32,
        pretrained_file: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        schedule: Literal["cosine", "constant"] = "cosine",
        label_smoothing: float = 0.0,
        ci_level: float = 0.95,
        results_dir: str | None = None,
        results_file: str | None = None,
        label: str | None = None,
        calibration: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        check_ci_level(ci_level)
        self.model: ImageClassifier = create_classifier(
            model_name, num_classes, in_chans, img_size, pretrained_file, **dict(model_kwargs or {})
        )
        self.val_accuracy: MulticlassAccuracy | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.val_accuracy = MulticlassAccuracy(self.label_space.num_classes, average="micro").to(self.device)

    def forward(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] → logits over model classes."""
        return self.model(images)

    def scores(self, images: Tensor) -> Tensor:
        """Images → label-space scores ``(B, K)``: each class takes the best logit of its model ids."""
        logits = self(images)
        return label_space_scores(logits, self.model_class_index(logits.device))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images, targets, _ = batch
        loss = F.cross_entropy(self.scores(images), targets, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        images, targets, _ = batch
        scores = self.scores(images)
        loss = F.cross_entropy(scores, targets)
        self.val_accuracy.update(scores, targets)
        self.log("val/loss", loss, prog_bar=True, batch_size=images.shape[0], sync_dist=True)
        self.log("val/accuracy", self.val_accuracy, prog_bar=True, batch_size=images.shape[0])

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.schedule == "constant":
            return opt
        total = self.trainer.estimated_stepping_batches
        if not 0 < total < float("inf"):
            raise ValueError("model.schedule=cosine needs a finite trainer.max_epochs or trainer.max_steps")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the resolved network config, so ``load_classifier`` rebuilds it without Lightning."""
        checkpoint["classifier_config"] = dict(self.model.config)

    def classify(self, images: Tensor, index: Tensor) -> Scored:
        """One forward per image; a label-space class ranks by its best logit and takes the probability
        of all its model ids."""
        logits = self(images).float()
        index = self.model_class_index(logits.device)
        return Scored(scores=label_space_scores(logits, index), logits=label_space_logits(logits, index),
                      forwards=torch.ones(images.shape[0], dtype=torch.long, device=logits.device))

    def result_context(self) -> dict[str, Any]:
        """Record fields of this run beside the metrics (see ``ClassifierTask.finish_test``)."""
        hp = self.hparams
        seed = os.environ.get("PL_GLOBAL_SEED")
        return {
            "model": hp.label or hp.model_name,
            "checkpoint": self.trainer.ckpt_path or hp.pretrained_file,
            "strategy": "logits",
            "seed": int(seed) if seed is not None else None,
            "timm_model": hp.model_name,
            "ci_level": hp.ci_level,
            "results_dir": hp.results_dir,
            "results_file": hp.results_file,
        }
