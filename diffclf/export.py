"""``python cli.py export``: a trained checkpoint's EMA DiT as a diffusers ``DiTPipeline`` folder."""

from __future__ import annotations

from diffclf.models.checkpoints import export_diffusers


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
    from diffclf.commands import load_module

    module = load_module(ckpt_path)
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
