"""Model spec resolution and loading (offline unless a hub id is asked for)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import torch

from steerlab._paths import REPO_ROOT, shared_dir
from steerlab.errors import ModelSpecError
from steerlab.models.adapters import adapter_for
from steerlab.models.handle import ModelHandle

ORGANISMS_DIR = REPO_ROOT / "steerlab" / "organisms" / "weights"
DEFAULT_MODEL = "organism:moe"
FALLBACK_MODEL = "shared:stories260K"

_CACHE: dict[tuple, ModelHandle] = {}
_LOCK = threading.Lock()

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def default_model() -> str:
    """The embedded default model: ``organism:moe`` when built, else ``shared:stories260K``."""
    return DEFAULT_MODEL if (ORGANISMS_DIR / "moe" / "config.json").exists() else FALLBACK_MODEL


def list_models() -> list[str]:
    """Model specs that load offline: the project's organisms and the shared models."""
    specs = []
    if ORGANISMS_DIR.is_dir():
        specs += [f"organism:{p.name}" for p in sorted(ORGANISMS_DIR.iterdir()) if (p / "config.json").exists()]
    try:
        models = shared_dir() / "models"
        specs += [f"shared:{p.name}" for p in sorted(models.iterdir()) if (p / "config.json").exists()]
    except FileNotFoundError:
        pass
    return specs


def resolve_spec(spec: str) -> tuple[Path | None, str | None]:
    """Return ``(local_dir, hub_id)`` for a spec; exactly one is not None."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"model spec must be a non-empty string, got {spec!r}")
    if spec.startswith("shared:"):
        name = spec.removeprefix("shared:")
        root = shared_dir() / "models"
        candidates = [p for p in root.iterdir() if p.is_dir() and (p.name == name or p.name.startswith(name))]
        exact = [p for p in candidates if p.name == name]
        if exact or len(candidates) == 1:
            return (exact or candidates)[0], None
        known = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ModelSpecError(f"no shared model {name!r} under {root}; expected one of {known}")
    if spec.startswith("organism:"):
        name = spec.removeprefix("organism:")
        path = ORGANISMS_DIR / name
        if not (path / "config.json").exists():
            known = [s.removeprefix("organism:") for s in list_models() if s.startswith("organism:")]
            raise ModelSpecError(
                f"organism {name!r} not found at {path}; built organisms: {known or 'none'} "
                "(build with `steerlab organisms build`)"
            )
        return path, None
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelSpecError(f"model path {str(path)!r} has no config.json; expected a Hugging Face model folder")
        return path, None
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") != 1 or os.sep + os.sep in spec
    if looks_like_path:
        raise ModelSpecError(
            f"model path {spec!r} does not exist; expected an existing Hugging Face model folder, "
            "'shared:NAME', 'organism:NAME' or a hub id 'org/name'"
        )
    return None, spec


def load(
    spec: str | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    cache: bool = True,
    attn_implementation: str | None = None,
) -> ModelHandle:
    """Load a causal LM by spec and return a :class:`ModelHandle`.

    ``spec``: ``"shared:NAME"`` (a folder under ``$STEERLAB_SHARED/models``), ``"organism:NAME"``
    (the project's committed organisms), a local HF folder, or a hub id (the only case that may
    touch the network). ``None`` loads the embedded default. Handles are cached per
    ``(spec, device, dtype)`` so a session dequantizes a GGUF model once.

    Example:
        >>> import steerlab as sl
        >>> sl.load("shared:stories260K").info()["architecture"]
        'LlamaForCausalLM'
    """
    spec = spec or default_model()
    torch_dtype = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if isinstance(dtype, str) and dtype not in _DTYPES:
        raise ModelSpecError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    key = (spec, str(device), str(torch_dtype), attn_implementation)
    with _LOCK:
        if cache and key in _CACHE:
            return _CACHE[key]
        handle = _load_uncached(spec, device, torch_dtype, attn_implementation)
        if cache:
            _CACHE[key] = handle
        return handle


def _load_uncached(spec: str, device: Any, dtype: torch.dtype | None, attn: str | None) -> ModelHandle:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, hub_id = resolve_spec(spec)
    kwargs: dict[str, Any] = {}
    if attn:
        kwargs["attn_implementation"] = attn
    tok_kwargs: dict[str, Any] = {}
    if path is not None:
        source: str = str(path)
        kwargs["local_files_only"] = True
        tok_kwargs["local_files_only"] = True
        ggufs = sorted(path.glob("*.gguf"))
        has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        if ggufs and not has_weights:
            kwargs["gguf_file"] = ggufs[0].name
    else:
        source = hub_id  # type: ignore[assignment]
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or "auto", **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
    except OSError as e:
        raise ModelSpecError(f"could not load model {spec!r} from {source!r}: {e}") from e
    if dtype is None and model.dtype not in (torch.float32,) and "gguf_file" in kwargs:
        model = model.float()
    return from_model(model.to(device), tokenizer, spec, path=path)


def from_model(model: Any, tokenizer: Any, spec: str = "in-memory", path: Path | None = None) -> ModelHandle:
    """Wrap an already-built HF model (e.g. a tiny from-config model) as a handle: eval mode, no
    gradients (see :func:`steerlab.scoring.gradients`), left padding, a pad token."""
    model = model.eval()
    model.requires_grad_(False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return ModelHandle(spec=spec, model=model, tokenizer=tokenizer, adapter=adapter_for(model), path=path)


def read_record(path: str | Path) -> dict[str, Any]:
    """The ``eval.json`` build record of an organism folder (what ``steerlab organisms build`` wrote)."""
    f = Path(path) / "eval.json"
    if not f.exists():
        raise ModelSpecError(f"{path} has no eval.json; build it with `steerlab organisms build`")
    return json.loads(f.read_text())


def is_organism(h: ModelHandle) -> bool:
    """Whether ``h`` is a built organism folder (it carries the build record ``eval.json``)."""
    return h.path is not None and (Path(h.path) / "eval.json").exists()
