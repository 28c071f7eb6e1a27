"""Tiny random text-to-image and CLIP models saved in the true folder formats (nothing can be downloaded).

``write_clip_tokenizer`` writes a real byte-level BPE vocabulary (every byte, with and without the
end-of-word mark, plus merges for a few whole words), so prompts tokenize as a CLIP tokenizer would; the
builders save diffusers ``StableDiffusionPipeline`` / ``StableDiffusion3Pipeline`` folders and a transformers
``CLIPModel`` folder with ``save_pretrained``, the way a user's downloaded folders are laid out.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("a", "photo", "of", "the", "blurry", "airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
         "horse", "ship", "truck", "red", "blue", "cube", "sphere")


def _byte_chars() -> list[str]:
    """GPT-2's byte → printable-character map (CLIP's tokenizer uses it too)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(folder: Path, words: tuple[str, ...] = WORDS, max_length: int = 16) -> tuple[Path, int]:
    """A CLIP tokenizer folder (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``); returns it and the
    vocabulary size (the last two ids are ``<|startoftext|>`` and ``<|endoftext|>``)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges: list[str] = []
    for w in words:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            vocab.setdefault(parts[0] + parts[1], len(vocab))
            parts = [parts[0] + parts[1]] + parts[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, **special})
    )
    return folder, len(vocab)


def clip_text_config(vocab_size: int, hidden: int = 32, projection: int | None = None, max_length: int = 16):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=max_length, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1, **({"projection_dim": projection} if projection else {}),
    )


def tiny_vae(scaling_factor: float = 0.18215, shift_factor: float | None = None, sample_size: int = 32):
    """An ``AutoencoderKL`` with SD's downsampling by 8 (four blocks) and 4 latent channels."""
    from diffusers import AutoencoderKL

    kwargs = {"shift_factor": shift_factor} if shift_factor is not None else {}
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        norm_num_groups=4, layers_per_block=1, sample_size=sample_size, scaling_factor=scaling_factor, **kwargs,
    )


def build_sd_pipeline(folder: Path, prediction_type: str = "epsilon", seed: int = 0, text_width: int = 32,
                      image_size: int = 32) -> Path:
    """A random SD 1.x/2.x-shaped ``StableDiffusionPipeline`` (UNet with cross-attention, VAE, CLIP text encoder,
    tokenizer, SD's scaled-linear scheduler) saved to ``folder``."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tok_dir, vocab = write_clip_tokenizer(folder.parent / f"{folder.name}-tokenizer-src")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    text_encoder = CLIPTextModel(clip_text_config(vocab, hidden=text_width))  # the UNet takes 32
    unet = UNet2DConditionModel(
        sample_size=image_size // 8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=tiny_vae(sample_size=image_size), text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def build_sd3_pipeline(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A random SD3-shaped ``StableDiffusion3Pipeline`` (MMDiT transformer, two CLIP encoders with projection, no
    T5 — SD3 runs without it — and the rectified-flow ``FlowMatchEulerDiscreteScheduler`` with shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    tok_dir, vocab = write_clip_tokenizer(folder.parent / f"{folder.name}-tokenizer-src")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    transformer = SD3Transformer2DModel(
        sample_size=image_size // 8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
        out_channels=4, pos_embed_max_size=16,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(scaling_factor=1.5305, shift_factor=0.0609, sample_size=image_size),
        text_encoder=CLIPTextModelWithProjection(clip_text_config(vocab, projection=32)), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(clip_text_config(vocab, projection=32)), tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None,
    )
    pipe.save_pretrained(folder)
    return folder


def build_clip_model(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A random transformers ``CLIPModel`` folder with its tokenizer and image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer, CLIPVisionConfig

    torch.manual_seed(seed)
    tok_dir, vocab = write_clip_tokenizer(folder.parent / f"{folder.name}-tokenizer-src")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=8)
    config = CLIPConfig(text_config=clip_text_config(vocab).to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPTokenizer.from_pretrained(tok_dir).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder
