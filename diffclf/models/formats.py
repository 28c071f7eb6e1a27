"""Pretrained DiTs in, diffusers pipelines out.

``load_dit`` reads the two formats DiT weights come in: facebookresearch/DiT's ``.pt`` (a plain state
dict, or a training checkpoint with ``model``/``ema``) and diffusers folders (a ``DiTPipeline`` or a bare
``DiTTransformer2DModel``). ``export_diffusers`` writes a ``DiTPipeline``. The two key layouts are
related by one table, :data:`DIFFUSERS_MAP`, read in both directions.

diffusers' DiT computes two details differently from the original (see ``diffclf.models.dit``): its
timestep frequencies (``timestep_freq_shift=1``) and the eps of the LayerNorm before the MLP
(``norm_eps`` in its config, 1e-5 by default vs 1e-6). A model read from a diffusers folder is built
with diffusers' values, so it computes what diffusers computes.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from diffclf.models.dit import DIT_PRESETS, DiT, sincos_pos_embed_2d

#: diffclf module ↔ diffusers module(s), and how the weights relate:
#: ``same`` one tensor each; ``shared`` diffusers keeps a copy in every block (``{j}``), diffclf one;
#: ``qkv`` diffclf's fused qkv is diffusers' to_q, to_k, to_v stacked on the output dimension.
#: ``{i}`` is the block index. ``pos_embed`` is not stored by diffusers (a fixed, recomputed table).
DIFFUSERS_MAP: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("x_embedder.proj", ("pos_embed.proj",), "same"),
    ("t_embedder.mlp.0", ("transformer_blocks.{j}.norm1.emb.timestep_embedder.linear_1",), "shared"),
    ("t_embedder.mlp.2", ("transformer_blocks.{j}.norm1.emb.timestep_embedder.linear_2",), "shared"),
    (
        "y_embedder.embedding_table",
        ("transformer_blocks.{j}.norm1.emb.class_embedder.embedding_table",),
        "shared",
    ),
    ("blocks.{i}.adaLN_modulation.1", ("transformer_blocks.{i}.norm1.linear",), "same"),
    (
        "blocks.{i}.attn.qkv",
        (
            "transformer_blocks.{i}.attn1.to_q",
            "transformer_blocks.{i}.attn1.to_k",
            "transformer_blocks.{i}.attn1.to_v",
        ),
        "qkv",
    ),
    ("blocks.{i}.attn.proj", ("transformer_blocks.{i}.attn1.to_out.0",), "same"),
    ("blocks.{i}.mlp.fc1", ("transformer_blocks.{i}.ff.net.0.proj",), "same"),
    ("blocks.{i}.mlp.fc2", ("transformer_blocks.{i}.ff.net.2",), "same"),
    ("final_layer.adaLN_modulation.1", ("proj_out_1",), "same"),
    ("final_layer.linear", ("proj_out_2",), "same"),
)

_DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")
_REQUIRED_ORIGINAL = (
    "x_embedder.proj.weight",
    "pos_embed",
    "y_embedder.embedding_table.weight",
    "blocks.0.mlp.fc1.weight",
    "final_layer.linear.weight",
)


def _mapped_keys(depth: int) -> Iterator[tuple[str, list[str], str]]:
    """Expand :data:`DIFFUSERS_MAP` to tensor keys: ``(diffclf key, [diffusers keys], kind)``."""
    for ours, theirs, kind in DIFFUSERS_MAP:
        suffixes = ("weight",) if ours.endswith("embedding_table") else ("weight", "bias")
        blocks = range(depth) if "{i}" in ours else [None]
        for i in blocks:
            for suffix in suffixes:
                key = f"{ours.format(i=i)}.{suffix}"
                if kind == "shared":
                    names = [f"{theirs[0].format(j=j)}.{suffix}" for j in range(depth)]
                else:
                    names = [f"{name.format(i=i)}.{suffix}" for name in theirs]
                yield key, names, kind


def _few(keys: Any, n: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" … ({len(keys)} in all)" if len(keys) > n else "") if keys else "none"


def state_dict_from_diffusers(
    sd: dict[str, Tensor], depth: int, where: str = "state dict"
) -> dict[str, Tensor]:
    """diffusers ``DiTTransformer2DModel`` weights → diffclf DiT weights (without ``pos_embed``).

    The per-block copies of the timestep and class embedders must be identical; block 0's are kept.
    """
    sd = dict(sd)
    out: dict[str, Tensor] = {}
    missing: list[str] = []
    for key, names, kind in _mapped_keys(depth):
        absent = [n for n in names if n not in sd]
        if absent:
            missing.extend(absent)
            continue
        tensors = [sd.pop(n) for n in names]
        if kind == "qkv":
            out[key] = torch.cat(tensors, dim=0)
        elif kind == "shared":
            for j, other in enumerate(tensors[1:], start=1):
                if other.shape != tensors[0].shape or not torch.equal(other, tensors[0]):
                    raise ValueError(
                        f"{where}: block {j}'s copy of the timestep/class embedder ({names[j]}) differs from "
                        "block 0's; diffclf's DiT shares one embedder across blocks"
                    )
            out[key] = tensors[0]
        else:
            out[key] = tensors[0]
    if missing or sd:
        raise ValueError(
            f"{where}: not a DiT with {depth} blocks in diffusers layout: missing keys {_few(missing)}; "
            f"unexpected keys {_few(sd)}"
        )
    return out


def state_dict_to_diffusers(sd: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """diffclf DiT weights → diffusers ``DiTTransformer2DModel`` weights (``pos_embed`` is dropped)."""
    out: dict[str, Tensor] = {}
    for key, names, kind in _mapped_keys(depth):
        value = sd[key]
        if kind == "qkv":
            for name, part in zip(names, value.chunk(3, dim=0)):
                out[name] = part.clone()
        else:
            for name in names:
                out[name] = value.clone()
    return out


# ---------------------------------------------------------------------------------------------- reading
def _torch_load(path: Path, map_location: Any) -> Any:
    """``torch.load`` without running arbitrary pickles; DiT's training checkpoints carry an argparse
    ``Namespace`` (``args``), which is allowed explicitly."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(
            f"{path}: cannot be read as a torch checkpoint with weights_only=True ({type(err).__name__}: {first})"
        ) from err


def _original_state_dict(path: Path, map_location: Any) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Any = load_file(str(path), device=str(map_location))
    else:
        obj = _torch_load(path, map_location)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a DiT state dict, got a {type(obj).__name__}")  # noqa: TRY004
    if "state_dict" in obj and "pytorch-lightning_version" in obj:
        raise ValueError(
            f"{path}: is a Lightning checkpoint, not a DiT state dict; load it with diffclf.tasks.checkpoints.load_task (or --ckpt_path)"
        )
    for key in ("ema", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    sd = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise ValueError(  # noqa: TRY004 - the file content is wrong, not the argument type
                f"{path}: expected a DiT state dict; entry {key!r} is a {type(value).__name__}"
            )
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        sd[key] = value
    return sd


def _num_heads(hidden: int, depth: int, patch: int, preset: str | None, num_heads: int | None) -> int:
    if num_heads is not None:
        return num_heads
    if preset is not None:
        return DIT_PRESETS[preset]["num_heads"]
    exact = [
        p
        for p in DIT_PRESETS.values()
        if (p["hidden_size"], p["depth"], p["patch_size"]) == (hidden, depth, patch)
    ]
    by_width = [p for p in DIT_PRESETS.values() if p["hidden_size"] == hidden]
    for candidates in (exact, by_width):
        if candidates:
            return candidates[0]["num_heads"]
    raise ValueError(f"hidden_size {hidden} matches no DiT preset; pass num_heads to load_dit")


def _preset_name(hidden: int, depth: int, patch: int) -> str | None:
    for name, p in DIT_PRESETS.items():
        if (p["hidden_size"], p["depth"], p["patch_size"]) == (hidden, depth, patch):
            return name
    return None


def _check_preset(where: str, preset: str | None, hidden: int, depth: int, patch: int) -> None:
    if preset is None:
        return
    if preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; known presets: {', '.join(DIT_PRESETS)}")
    want = DIT_PRESETS[preset]
    if (want["hidden_size"], want["depth"], want["patch_size"]) != (hidden, depth, patch):
        found = _preset_name(hidden, depth, patch) or "a DiT"
        raise ValueError(
            f"{where}: holds {found} (hidden_size={hidden}, depth={depth}, patch_size={patch}), not {preset} "
            f"(hidden_size={want['hidden_size']}, depth={want['depth']}, patch_size={want['patch_size']})"
        )


def _build(config: dict[str, Any], sd: dict[str, Tensor], where: str) -> DiT:
    """Build on the meta device (no init of throw-away weights) and assign the checkpoint's tensors, in fp32."""
    with torch.device("meta"):
        model = DiT(**config)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    expected = set(model.state_dict())
    missing, unexpected = expected - set(sd), set(sd) - expected
    if missing or unexpected:
        raise ValueError(
            f"{where}: not a DiT: missing keys {_few(missing)}; unexpected keys {_few(unexpected)}"
        )
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise ValueError(f"{where}: weights do not fit a DiT of config {config}: {detail[:400]}") from err
    return model.eval()


def _load_original(
    path: Path, preset: str | None, num_classes: int | None, num_heads: int | None, map_location: Any
) -> DiT:
    sd = _original_state_dict(path, map_location)
    absent = [k for k in _REQUIRED_ORIGINAL if k not in sd]
    if absent:
        raise ValueError(
            f"{path}: not a DiT checkpoint (facebookresearch/DiT layout): missing keys {_few(absent)}; "
            f"it has keys {_few(sd)}"
        )
    hidden, in_channels, patch, patch_w = sd["x_embedder.proj.weight"].shape
    tokens = sd["pos_embed"].shape[1]
    grid = math.isqrt(tokens)
    if patch != patch_w or grid * grid != tokens:
        raise ValueError(
            f"{path}: not a DiT: non-square patches ({patch}x{patch_w}) or token grid ({tokens} tokens)"
        )
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    _check_preset(str(path), preset, hidden, depth, patch)
    out_channels = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(
            f"{path}: output has {out_channels} channels for {in_channels} input channels (want C or 2C)"
        )
    rows = sd["y_embedder.embedding_table.weight"].shape[0]
    if num_classes is None:
        num_classes, dropout = rows - 1, 0.1  # DiT always trains with a null-class row
    elif rows == num_classes + 1:
        dropout = 0.1
    elif rows == num_classes:
        dropout = 0.0
    else:
        raise ValueError(
            f"{path}: label table has {rows} rows, i.e. {rows - 1} classes plus the null class, "
            f"but num_classes={num_classes} was asked for"
        )
    config = {
        "input_size": grid * patch,
        "patch_size": patch,
        "in_channels": in_channels,
        "hidden_size": hidden,
        "depth": depth,
        "num_heads": _num_heads(hidden, depth, patch, preset, num_heads),
        "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        "class_dropout_prob": dropout,
        "num_classes": num_classes,
        "learn_sigma": out_channels == 2 * in_channels,
    }
    return _build(config, sd, str(path))


def _transformer_folder(folder: Path) -> Path:
    if (folder / "model_index.json").is_file():
        index = json.loads((folder / "model_index.json").read_text())
        if "transformer" not in index:
            raise ValueError(
                f"{folder}/model_index.json: a {index.get('_class_name')} without a transformer, not a DiT"
            )
        return folder / "transformer"
    if (folder / "config.json").is_file():
        return folder
    raise ValueError(
        f"{folder}: a folder without model_index.json (diffusers pipeline) or config.json (diffusers transformer)"
    )


def _diffusers_weights(folder: Path, map_location: Any) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    single = folder / "diffusion_pytorch_model.safetensors"
    if single.is_file():
        return load_file(str(single), device=str(map_location))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {
            k: v
            for shard in shards
            for k, v in load_file(str(folder / shard), device=str(map_location)).items()
        }
    legacy = folder / "diffusion_pytorch_model.bin"
    if legacy.is_file():
        return _torch_load(legacy, map_location)
    raise ValueError(f"{folder}: no diffusion_pytorch_model.safetensors (or .bin) weights file")


def _load_diffusers(
    folder: Path, preset: str | None, num_classes: int | None, num_heads: int | None, map_location: Any
) -> DiT:
    tdir = _transformer_folder(folder)
    config_file = tdir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{tdir}: no config.json (expected a diffusers DiTTransformer2DModel folder)")
    cfg = json.loads(config_file.read_text())
    where = str(config_file)
    if cfg.get("_class_name") not in _DIFFUSERS_CLASSES:
        raise ValueError(
            f"{where}: describes {cfg.get('_class_name')!r}, not a diffusers DiTTransformer2DModel"
        )
    norm_type = cfg.get("norm_type", "ada_norm_zero")  # the hub's DiT configs predate the key
    checks = {
        "norm_type": (norm_type, "ada_norm_zero"),
        "activation_fn": (cfg.get("activation_fn", "gelu-approximate"), "gelu-approximate"),
        "attention_bias": (cfg.get("attention_bias", True), True),
        "norm_elementwise_affine": (cfg.get("norm_elementwise_affine", False), False),
    }
    for key, (got, want) in checks.items():
        if got != want:
            raise ValueError(f"{where}: {key}={got!r}; diffclf's DiT needs {key}={want!r}")
    if cfg.get("num_embeds_ada_norm") is None or cfg.get("patch_size") is None:
        raise ValueError(f"{where}: not a class-conditional DiT (needs num_embeds_ada_norm and patch_size)")
    heads, head_dim = int(cfg.get("num_attention_heads", 16)), int(cfg.get("attention_head_dim", 72))
    hidden, depth, patch = heads * head_dim, int(cfg.get("num_layers", 28)), int(cfg["patch_size"])
    _check_preset(str(folder), preset, hidden, depth, patch)
    if num_heads is not None and num_heads != heads:
        raise ValueError(f"{where}: num_attention_heads={heads}, but num_heads={num_heads} was asked for")
    in_channels = int(cfg.get("in_channels", 4))
    out_channels = int(cfg.get("out_channels") or in_channels)
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"{where}: out_channels={out_channels} for in_channels={in_channels} (want C or 2C)")
    classes = int(cfg["num_embeds_ada_norm"])
    if num_classes is not None and num_classes != classes:
        raise ValueError(
            f"{where}: num_embeds_ada_norm={classes} classes, but num_classes={num_classes} was asked for"
        )
    sd = state_dict_from_diffusers(_diffusers_weights(tdir, map_location), depth, where=str(tdir))
    config = {
        "input_size": int(cfg.get("sample_size", 32)),
        "patch_size": patch,
        "in_channels": in_channels,
        "hidden_size": hidden,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        "class_dropout_prob": 0.1,  # diffusers always keeps the null-class row
        "num_classes": classes,
        "learn_sigma": out_channels == 2 * in_channels,
        "timestep_freq_shift": 1.0,
        "norm2_eps": float(cfg.get("norm_eps", 1e-5)),
    }
    grid = config["input_size"] // patch
    sd["pos_embed"] = sincos_pos_embed_2d(hidden, grid).float().unsqueeze(0)
    return _build(config, sd, str(tdir))


def load_dit(
    path: str | Path,
    preset: str | None = None,
    num_classes: int | None = None,
    map_location: Any = "cpu",
    num_heads: int | None = None,
) -> DiT:
    """A pretrained DiT in eval mode, fp32, from facebookresearch/DiT ``.pt`` files or diffusers folders.

    Sizes, channels, learned sigma and classes are read from the weights (and the diffusers config);
    the number of heads, which weights do not show, from the diffusers config or the preset table.

    Args:
        path: a ``.pt``/``.pth``/``.safetensors`` state dict (plain, or a training checkpoint with ``model``/
            ``ema``, ``ema`` preferred), or a diffusers ``DiTPipeline`` / ``DiTTransformer2DModel`` folder.
        preset: if given, the checkpoint must be this size (e.g. ``"DiT-XL/2"``); it also names the heads.
        num_classes: if given, the checkpoint must have this many classes. For original files it also tells
            a table with a null row (``num_classes + 1`` rows) from one without.
        map_location: device the weights are read to.
        num_heads: heads, for sizes that match no preset.
    """
    path = Path(path)
    if path.is_dir():
        return _load_diffusers(path, preset, num_classes, num_heads, map_location)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such DiT checkpoint file or diffusers folder")
    return _load_original(path, preset, num_classes, num_heads, map_location)


def read_pipeline_info(folder: str | Path) -> dict[str, Any]:
    """What a diffusers DiT folder says besides the weights, for building the schedule and class names.

    Returns ``{"schedule": NoiseSchedule kwargs or None (no scheduler folder), "id2label": {int: str} or
    None, "vae": the vae subfolder or None}``. Only linear beta schedules with epsilon prediction are
    accepted: that is what DiT is trained with and what ``NoiseSchedule`` implements.
    """
    folder = Path(folder)
    tdir = _transformer_folder(folder)
    schedule = None
    sched_file = folder / "scheduler" / "scheduler_config.json"
    if sched_file.is_file():
        cfg = json.loads(sched_file.read_text())
        beta_schedule = cfg.get("beta_schedule", "linear")
        if beta_schedule != "linear" or cfg.get("trained_betas") is not None:
            got = "trained_betas" if cfg.get("trained_betas") is not None else repr(beta_schedule)
            raise ValueError(
                f"{sched_file}: beta schedule {got}; diffclf's NoiseSchedule supports only 'linear'"
            )
        if cfg.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(
                f"{sched_file}: prediction_type={cfg['prediction_type']!r}; DiT predicts 'epsilon'"
            )
        schedule = {
            "num_timesteps": int(cfg.get("num_train_timesteps", 1000)),
            "beta_start": float(cfg.get("beta_start", 1e-4)),
            "beta_end": float(cfg.get("beta_end", 0.02)),
        }
    id2label = None
    for source in (folder / "model_index.json", tdir / "config.json"):
        if source.is_file():
            labels = json.loads(source.read_text()).get("id2label")
            if labels:
                id2label = {int(k): str(v) for k, v in labels.items()}
                break
    vae = folder / "vae"
    return {
        "schedule": schedule,
        "id2label": id2label,
        "vae": str(vae) if (vae / "config.json").is_file() else None,
    }


# ---------------------------------------------------------------------------------------------- writing
def to_diffusers_transformer(dit: DiT) -> Any:
    """The same network as a diffusers ``DiTTransformer2DModel`` (weights copied through :data:`DIFFUSERS_MAP`).

    diffusers has no option for the original timestep frequencies, so a DiT with
    ``timestep_freq_shift != 1`` changes slightly (a warning says so); ``norm2_eps`` is carried over exactly.
    """
    from diffusers import DiTTransformer2DModel

    if dit.class_dropout_prob <= 0:
        raise ValueError(
            "diffusers' DiT always has a null-class row in its label table; this DiT was built with "
            "class_dropout_prob=0 and has none"
        )
    if dit.mlp_ratio != 4.0:
        raise ValueError(f"diffusers' DiT has an MLP ratio of 4; this DiT has mlp_ratio={dit.mlp_ratio}")
    if dit.timestep_freq_shift != 1.0:
        warnings.warn(
            f"this DiT uses timestep_freq_shift={dit.timestep_freq_shift} (original DiT); diffusers' DiT uses 1, "
            "so the exported model's timestep features differ slightly (as for diffusers' own DiT-XL/2 port)",
            stacklevel=2,
        )
    transformer = DiTTransformer2DModel(
        num_attention_heads=dit.num_heads,
        attention_head_dim=dit.hidden_size // dit.num_heads,
        in_channels=dit.in_channels,
        out_channels=dit.out_channels,
        num_layers=dit.depth,
        sample_size=dit.input_size,
        patch_size=dit.patch_size,
        num_embeds_ada_norm=dit.num_classes,
        norm_eps=dit.norm2_eps,
    )
    sd = {k: v.detach().float().cpu() for k, v in dit.state_dict().items()}
    transformer.load_state_dict(state_dict_to_diffusers(sd, dit.depth), strict=True)
    return transformer.eval()


def export_diffusers(
    dit: DiT,
    out_dir: str | Path,
    schedule_config: dict[str, Any] | None = None,
    vae_path: str | None = None,
    id2label: dict[int, str] | None = None,
    scheduler: Literal["ddim", "dpm"] = "ddim",
) -> Path:
    """Write ``dit`` as a diffusers ``DiTPipeline`` folder that ``DiTPipeline.from_pretrained`` loads offline.

    ``id2label`` goes into ``model_index.json``, where ``DiTPipeline`` reads it (``pipe.labels``,
    ``get_label_ids``). The pipeline hard-codes the null class 1000 for guidance, so with
    ``num_classes != 1000`` only ``guidance_scale=1`` works there.

    Args:
        dit: a latent-space DiT.
        out_dir: folder to write (``model_index.json``, ``transformer/``, ``vae/``, ``scheduler/``).
        schedule_config: ``NoiseSchedule.config()`` kwargs (default: DiT's linear 1e-4 → 0.02 over 1000).
        vae_path: the VAE folder the DiT's latents come from; required, as ``DiTPipeline`` decodes with it.
        id2label: class names by model class id.
        scheduler: ``ddim`` (DDIMScheduler) or ``dpm`` (DPMSolverMultistepScheduler), same linear betas.
    """
    from diffusers import DDIMScheduler, DiTPipeline, DPMSolverMultistepScheduler

    from diffclf.models.latents import load_vae

    if vae_path is None:
        raise ValueError(
            "diffusers' DiTPipeline needs a VAE to decode latents: pass vae_path (a pixel-space DiT cannot be "
            "exported as a DiTPipeline)"
        )
    vae = load_vae(vae_path)
    if vae.config.latent_channels != dit.in_channels:
        raise ValueError(
            f"VAE {vae_path} has {vae.config.latent_channels} latent channels but the DiT takes {dit.in_channels}"
        )
    sched = {"num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, **(schedule_config or {})}
    kwargs = {
        "num_train_timesteps": int(sched["num_timesteps"]),
        "beta_start": float(sched["beta_start"]),
        "beta_end": float(sched["beta_end"]),
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
    }
    if scheduler == "ddim":
        noise_scheduler = DDIMScheduler(**kwargs, clip_sample=False)
    elif scheduler == "dpm":
        noise_scheduler = DPMSolverMultistepScheduler(**kwargs)
    else:
        raise ValueError(f"scheduler must be 'ddim' or 'dpm', got {scheduler!r}")
    labels = {int(k): str(v) for k, v in id2label.items()} if id2label else None
    pipe = DiTPipeline(
        transformer=to_diffusers_transformer(dit), vae=vae, scheduler=noise_scheduler, id2label=labels
    )
    if labels:
        pipe.register_to_config(id2label=labels)
    out = Path(out_dir)
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out
