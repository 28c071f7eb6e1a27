"""``diffclf export``: a trained checkpoint's EMA DiT as a diffusers ``DiTPipeline`` folder."""

from __future__ import annotations

from diffclf.models.formats import export_diffusers
from diffclf.tasks.checkpoints import load_task
from diffclf.tasks.diffusion import DiffusionClassifier


def export(ckpt_path: str, out: str, vae: str | None = None) -> str:
    """Write the EMA weights of a Lightning checkpoint as a diffusers ``DiTPipeline`` folder.

    The folder loads offline with ``diffusers.DiTPipeline.from_pretrained(out)``; class names (when the
    checkpoint has them) become the pipeline's ``id2label``, and the noise schedule its scheduler's betas.

    Args:
        ckpt_path: Lightning checkpoint written by ``fit``.
        out: folder to write.
        vae: VAE folder to bundle (default: the one the model was trained with); required by
            ``DiTPipeline``, so pixel-space models cannot be exported.
    """
    module = load_task(ckpt_path)
    if not isinstance(module, DiffusionClassifier):
        raise ValueError(f"--ckpt_path {ckpt_path}: a {type(module).__name__} checkpoint is not a DiT")  # noqa: TRY004 - a user's file: one-line error
    names = module.hparams.get("class_names")
    id2label = {i: str(name) for i, name in enumerate(names)} if names else None
    path = export_diffusers(
        module.ema,
        out,
        schedule_config=module.schedule.config(),
        vae_path=vae if vae is not None else module.hparams.get("vae"),
        id2label=id2label,
    )
    print(f"diffusers DiTPipeline written to {path}")
    return str(path)
