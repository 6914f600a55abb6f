"""Artifacts of the security analysis, registered in :mod:`steerlab.artifacts`.

* ``security_vector``: a trained vector (``tensors.safetensors`` + ``card.json``), written by
  ``steerlab security train-vector`` (:meth:`steerlab.security.vectors.SecurityVector.save`).
* ``security_finetune``: a fine-tuned model as a normal Hugging Face folder (it loads as a model spec) with
  its training curves in ``artifact.json``, written by ``steerlab security finetune``.
* ``security_sweep``: the whole experiment's record (compliance against harmful samples with and without the
  vector, loss curves, floors, sample answers), written by ``steerlab security evaluate``; the Security page
  reads it.

Example:
    >>> import tempfile
    >>> from steerlab.models.tiny import tiny_model
    >>> h = tiny_model("llama")
    >>> path = write_finetune(tempfile.mkdtemp() + "/ft", h, {"losses": {}}, {"model": "tiny:llama"})
    >>> import steerlab as sl
    >>> sl.load(str(path), cache=False).model.config.hidden_size
    64
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from steerlab.artifacts import Artifact, register_kind, write_artifact
from steerlab.errors import SpecError
from steerlab.models.handle import ModelHandle
from steerlab.security.vectors import KIND as VECTOR_KIND
from steerlab.security.vectors import load_vector

FINETUNE_KIND = "security_finetune"
SWEEP_KIND = "security_sweep"


def write_finetune(out: str | Path, h: ModelHandle, train: dict[str, Any], config: dict[str, Any]) -> Path:
    """``h``'s model and tokenizer plus ``artifact.json`` (config and curves) in one folder, crash-safely."""
    if any("lora_" in n for n, _ in h.model.named_parameters()):
        raise SpecError(f"{h.spec} still carries a switched-on vector; expected the plain model to save")
    with tempfile.TemporaryDirectory() as tmp:
        h.model.save_pretrained(tmp)
        h.tokenizer.save_pretrained(tmp)
        files: dict[str, str | bytes] = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    metrics = {"steps": train.get("steps"), "seconds": train.get("seconds")}
    return write_artifact(
        out, kind=FINETUNE_KIND, config=config, metrics=metrics, data={"train": train}, extra_files=files
    )


def write_sweep(out: str | Path, record: dict[str, Any]) -> Path:
    """The experiment's record as a ``security_sweep`` artifact."""
    metrics = {
        "rise": record["rise"],
        "benign_accuracy_gap": record["benign_accuracy_gap"],
        "vector_off": record["vector_off"],
        "floors": record["floors"],
    }
    return write_artifact(out, kind=SWEEP_KIND, config=record["config"], metrics=metrics, data=record)


def read_sweep(art: Artifact) -> dict[str, Any]:
    """The record of a ``security_sweep`` artifact."""
    return dict(art.data)


SECURITY_VECTOR = register_kind(
    VECTOR_KIND,
    owner="steerlab.security",
    producer="security train-vector",
    reader=lambda art: load_vector(art.path),
    summary="security vector: LoRA or per-layer add vectors trained on harmful pairs (switched on while fine-tuning)",
)
SECURITY_FINETUNE = register_kind(
    FINETUNE_KIND,
    owner="steerlab.security",
    producer="security finetune",
    summary="a model fine-tuned with or without a security vector on (a loadable model folder) and its loss curves",
)
SECURITY_SWEEP = register_kind(
    SWEEP_KIND,
    owner="steerlab.security",
    producer="security evaluate",
    reader=read_sweep,
    summary="harmful compliance vs harmful fine-tuning samples with and without the security vector",
)
