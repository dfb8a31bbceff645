"""The image encoder: load a CLIP checkpoint, run its vision tower on every device.

- :func:`describe_model` reads a checkpoint's config and image processor (no weights) and
  gives the fingerprint that keys the feature cache;
- :func:`load_image_model` loads the vision tower + projection (the text tower is left on
  disk: it would only be copied to every GPU on every DataParallel step);
- :class:`ImageFeatureExtractor` is the module DataParallel wraps: ``forward(pixel_values)``
  calls ``get_image_features`` (or the projection model) and returns a plain tensor;
- :func:`make_parallel` wraps it in ``nn.DataParallel`` over the chosen GPUs. The pipeline
  calls the wrapper itself, so each GPU gets its slice of the batch;
- :func:`build_random_clip` saves a randomly initialised CLIP (tiny, or the real ViT-B/32
  architecture) with ``save_pretrained``, for tests and benchmarks without network.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmctr.device import resolve_device
from mmctr.embedding.images import EmbeddingError
from mmctr.runtime import flush_denormals

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
AMP_CHOICES = ("none", "bf16", "fp16")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (errors still raise)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@dataclass
class ModelSpec:
    """A checkpoint's config and image processor, and the fingerprint of both.

    ``source`` is what from_pretrained gets: an absolute local folder or a hub name.
    ``raw_dim`` is the projected feature width (512 for ViT-B/32), None when the config does
    not say (found by running the model once).
    """

    name: str
    source: str
    is_local: bool
    config: Any
    processor: Any
    raw_dim: int | None
    fingerprint: str

    @property
    def slug(self) -> str:
        base = self.name.rstrip("/\\")
        if self.is_local:
            base = Path(base).name
        return re.sub(r"[^A-Za-z0-9_.-]+", "--", base).strip("-.") or "model"


def _hub_error(name: str, exc: BaseException) -> EmbeddingError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return EmbeddingError(
        f"--model {name!r} is not a local folder, and it could not be loaded from the Hugging "
        f"Face hub ({first}). Either this machine cannot reach the hub or no such model "
        "exists. To use a hub model offline, save it on a machine with network access: "
        '`python -c "from transformers import CLIPModel, CLIPImageProcessor; '
        f"n = '{name}'; d = 'clip_dir'; CLIPModel.from_pretrained(n).save_pretrained(d); "
        'CLIPImageProcessor.from_pretrained(n).save_pretrained(d)"`, copy the folder here '
        "and pass --model clip_dir (a folder written by save_pretrained, with config.json, "
        "the weights and preprocessor_config.json). If the model is already in the local "
        "Hugging Face cache, set HF_HUB_OFFLINE=1 to skip the network."
    )


def _local_weights_signature(folder: Path) -> list[tuple[str, int, int]]:
    sig = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES):
            st = p.stat()
            sig.append((p.name, int(st.st_size), int(st.st_mtime_ns)))
    return sig


def _processor_dict(processor: Any) -> dict:
    d = processor.to_dict() if hasattr(processor, "to_dict") else {"repr": repr(processor)}
    d.pop("processor_class", None)
    return d


def describe_model(name: str) -> ModelSpec:
    """Read the config and image processor of ``name`` (a local save_pretrained folder or a
    hub name) without loading weights."""
    from transformers import AutoConfig, AutoImageProcessor

    path = Path(name).expanduser()
    is_local = path.is_dir()
    if path.exists() and not is_local:
        raise EmbeddingError(
            f"--model {name}: this is a file; pass the folder written by save_pretrained"
        )
    if not is_local and (name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1):
        raise EmbeddingError(f"--model {name}: no such folder (and not a hub name)")
    source = str(path.resolve()) if is_local else name
    with quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(source)
        except Exception as exc:
            if is_local:
                raise EmbeddingError(
                    f"--model {name}: cannot read a transformers config.json in this folder "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            raise _hub_error(name, exc) from exc
        try:
            processor = AutoImageProcessor.from_pretrained(source)
        except Exception as exc:
            raise EmbeddingError(
                f"--model {name}: no usable image processor (preprocessor_config.json) for "
                f"this model ({type(exc).__name__}: {exc}). Save the processor next to the "
                "model with CLIPImageProcessor(...).save_pretrained(folder)."
            ) from exc

    raw_dim = getattr(config, "projection_dim", None)
    if raw_dim is None and hasattr(config, "vision_config"):
        raw_dim = getattr(config.vision_config, "projection_dim", None)

    key: dict[str, Any] = {
        "source": source,
        "config": config.to_dict(),
        "processor": _processor_dict(processor),
    }
    if is_local:
        key["weights"] = _local_weights_signature(path)
    else:
        key["revision"] = getattr(config, "_commit_hash", None)
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    fingerprint = hashlib.sha1(blob).hexdigest()
    return ModelSpec(
        name, source, is_local, config, processor, int(raw_dim) if raw_dim else None, fingerprint
    )


def load_image_model(spec: ModelSpec) -> nn.Module:
    """The vision tower with its projection, float32, eval mode, on the CPU.

    A full CLIP checkpoint is loaded into ``CLIPVisionModelWithProjection`` (the vision
    config's ``projection_dim`` is set from the top-level one, so the projection loads); if
    any vision weight were missing it falls back to the whole ``CLIPModel``. Other
    architectures load with ``AutoModel`` and must have ``get_image_features``.
    """
    from transformers import AutoModel, CLIPModel, CLIPVisionModelWithProjection

    kind = getattr(spec.config, "model_type", "")
    with quiet_transformers():
        try:
            if kind == "clip":
                vision_config = copy.deepcopy(spec.config.vision_config)
                vision_config.projection_dim = spec.config.projection_dim
                model, info = CLIPVisionModelWithProjection.from_pretrained(
                    spec.source,
                    config=vision_config,
                    dtype=torch.float32,
                    output_loading_info=True,
                )
                if info["missing_keys"] or info["mismatched_keys"]:
                    model = CLIPModel.from_pretrained(spec.source, dtype=torch.float32)
            elif kind == "clip_vision_model":
                model, info = CLIPVisionModelWithProjection.from_pretrained(
                    spec.source, dtype=torch.float32, output_loading_info=True
                )
                if info["missing_keys"]:
                    raise EmbeddingError(
                        f"--model {spec.name}: this vision-only checkpoint lacks weights "
                        f"{sorted(info['missing_keys'])[:4]} (the projection?); pass a full "
                        "CLIP checkpoint"
                    )
            else:
                model = AutoModel.from_pretrained(spec.source, dtype=torch.float32)
                if not hasattr(model, "get_image_features"):
                    raise EmbeddingError(
                        f"--model {spec.name}: a {type(model).__name__} has no "
                        "get_image_features(); pass a CLIP checkpoint"
                    )
        except EmbeddingError:
            raise
        except Exception as exc:
            if spec.is_local:
                raise EmbeddingError(
                    f"--model {spec.name}: loading the weights failed ({type(exc).__name__}: {exc})"
                ) from exc
            raise _hub_error(spec.name, exc) from exc
    return model.eval()


VISION_PREFIXES = ("vision_model.", "visual_projection.")


def _config_for_digest(config: Any) -> dict:
    """The settings that shape the image features: the vision config (or the whole config
    of a non-CLIP model) and the projection width, without paths and library versions."""
    if hasattr(config, "vision_config"):
        d = {"vision": config.vision_config.to_dict()}
        d["projection_dim"] = getattr(config, "projection_dim", None)
    else:
        d = {"config": config.to_dict()}

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {
                k: clean(v)
                for k, v in x.items()
                if not str(k).startswith("_") and k != "transformers_version"
            }
        return x

    return clean(d)


def model_digest(model: nn.Module, spec: ModelSpec) -> str:
    """sha256 of what makes the image features: the vision config and projection width, the
    image processor's settings and the bytes of the vision tower's and projection's weights
    (every weight for a non-CLIP model), in a fixed order. It does not depend on where the
    model lies or how it is named: the same weights in another folder give the same digest,
    other weights under the same name another. Stored in the PCA file and checked by
    ``--pca``. Costs one pass over the weights (ViT-B/32's vision side: 88M floats)."""
    h = hashlib.sha256()
    settings = {
        "config": _config_for_digest(spec.config),
        "processor": _processor_dict(spec.processor),
    }
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    state = model.state_dict()
    keys = sorted(k for k in state if k.startswith(VISION_PREFIXES)) or sorted(state)
    for key in keys:
        t = state[key].detach()
        h.update(f"\0{key}|{str(t.dtype)}|{tuple(t.shape)}\0".encode())
        flat = t.to("cpu").contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy())
    return h.hexdigest()


def image_features_tensor(out: Any) -> torch.Tensor:
    """The projected image embedding (B, D) from whatever the model returned: a tensor
    (transformers 4.x ``get_image_features``), a ``BaseModelOutputWithPooling`` (5.x; the
    projected embedding is its ``pooler_output``) or a ``CLIPVisionModelOutput``
    (``image_embeds``)."""
    if isinstance(out, torch.Tensor):
        return out
    for attr in ("image_embeds", "pooler_output"):
        value = getattr(out, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find image features in a {type(out).__name__}")


class ImageFeatureExtractor(nn.Module):
    """pixel_values (B, 3, H, W) -> projected image features (B, D), float32. uint8 pixels
    are first rescaled and normalised by ``pixel_norm`` (on each replica's device).

    This is the module DataParallel replicates; inference mode and autocast are entered here,
    inside each replica's thread (both are thread-local).
    """

    def __init__(
        self,
        model: nn.Module,
        amp_dtype: torch.dtype | None = None,
        pixel_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.amp_dtype = amp_dtype
        self.pixel_norm = pixel_norm  # finishes uint8 pixels (images.split_processor)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dtype == torch.uint8:
            if self.pixel_norm is None:
                raise TypeError("uint8 pixels need the processor's PixelNorm")
            pixel_values = self.pixel_norm(pixel_values)
        autocast = (
            torch.autocast(pixel_values.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            if hasattr(self.model, "get_image_features"):
                out = self.model.get_image_features(pixel_values=pixel_values)
            else:
                out = self.model(pixel_values=pixel_values)
        return image_features_tensor(out).float()


def resolve_devices(gpu: int | Sequence[int] | None) -> list[torch.device]:
    """``--gpu`` -> devices. None: every visible GPU (the CPU when there is none); -1: CPU;
    a list of indices: those GPUs (a missing one is an error, never a fall-back)."""
    if gpu is None:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device(f"cuda:{i}") for i in range(n)] or [torch.device("cpu")]
    ids = [int(gpu)] if isinstance(gpu, (int, str)) else [int(g) for g in gpu]
    if not ids:
        return resolve_devices(None)
    if any(g < 0 for g in ids):
        if len(ids) > 1:
            raise EmbeddingError(f"--gpu {ids}: -1 (the CPU) cannot be combined with GPUs")
        return [torch.device("cpu")]
    if len(set(ids)) != len(ids):
        raise EmbeddingError(f"--gpu {ids}: a GPU is listed twice")
    try:
        return [resolve_device(g) for g in ids]
    except RuntimeError as exc:
        raise EmbeddingError(str(exc)) from exc


def resolve_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """``--amp`` -> autocast dtype. Default: bf16 on CUDA, none on the CPU."""
    if amp is None:
        return torch.bfloat16 if device.type == "cuda" else None
    if amp not in AMP_CHOICES:
        raise EmbeddingError(f"--amp {amp!r}: choose one of {', '.join(AMP_CHOICES)}")
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def make_parallel(extractor: ImageFeatureExtractor, devices: Sequence[torch.device]) -> nn.Module:
    """Wrap ``extractor`` in ``nn.DataParallel`` over ``devices``; call the result.

    On CUDA the batch is split across the GPUs. Without CUDA, DataParallel simply calls the
    module (the same code path, so the CPU tests exercise it). The CPU on a CUDA machine gets
    the bare extractor (DataParallel would claim the GPUs).
    """
    if devices[0].type == "cuda":
        extractor.to(devices[0])
        return nn.DataParallel(extractor, device_ids=[d.index for d in devices])
    if not torch.cuda.is_available():
        return nn.DataParallel(extractor)
    return extractor.to(devices[0])


# --------------------------------------------------------------------------- random models

ARCHS = ("tiny", "vit-b32")


def random_clip(
    arch: str = "tiny", seed: int = 0, projection_dim: int | None = None
) -> tuple[nn.Module, Any]:
    """A randomly initialised ``CLIPModel`` and its ``CLIPImageProcessor``.

    ``tiny``: 64 px images, 16 px patches, width 64, 2 layers, 256-d projection (about
    1 MB; wide enough for the 128-d PCA of the data contract). ``vit-b32``: the architecture
    of openai/clip-vit-base-patch32 (224 px, 32 px patches, width 768, 12 layers, 512-d
    projection; 151M parameters). ``projection_dim`` overrides the feature width.
    ``projection_dim`` is set in the top-level and the vision config alike, so the checkpoint
    also loads into ``CLIPVisionModelWithProjection``.
    """
    with quiet_transformers():  # without torchvision: a warning that it falls back to PIL
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    if arch == "tiny":
        proj, image_size = 256, 64
        vision = dict(
            image_size=image_size,
            patch_size=16,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
        )
        text = dict(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            pad_token_id=1,
            bos_token_id=998,
            eos_token_id=999,
        )
    elif arch == "vit-b32":
        proj, image_size = 512, 224
        vision = dict(
            image_size=image_size,
            patch_size=32,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
        )
        text = dict(
            vocab_size=49408,
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            max_position_embeddings=77,
        )
    else:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    proj = int(projection_dim or proj)
    config = CLIPConfig(
        text_config={**text, "projection_dim": proj, "hidden_act": "quick_gelu"},
        vision_config={**vision, "projection_dim": proj, "hidden_act": "quick_gelu"},
        projection_dim=proj,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    return model, processor


def build_random_clip(
    out_dir: str | os.PathLike,
    arch: str = "tiny",
    seed: int = 0,
    projection_dim: int | None = None,
) -> Path:
    """Save a random CLIP (:func:`random_clip`) and its processor to ``out_dir`` with
    ``save_pretrained``; the folder loads like a downloaded checkpoint."""
    flush_denormals()  # an entry point (make_tiny_clip.py, the demo): as train() does
    out_dir = Path(out_dir)
    model, processor = random_clip(arch, seed, projection_dim)
    out_dir.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
    return out_dir
