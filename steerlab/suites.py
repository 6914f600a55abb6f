"""Prompt suites: versioned, contrasting prompt sets that image a behavior.

A suite is a folder under ``suites/`` (or anywhere) holding ``suite.json``. Its ``sources`` list
where prompts come from: a file under the shared assets (``"shared:data/..."``, read in place, never
copied), a file beside ``suite.json``, or inline ``prompts``. Each source carries a ``label`` and
either a fixed ``split`` or a seeded ``split_sizes`` partition. The loader validates the suite
(labels declared, every split non-empty, no prompt in two splits) and wraps prompts in a model's
chat template on request. The format is documented in ``suites/README.md``.

Example:
    >>> from steerlab.suites import load_suite
    >>> suite = load_suite("refusal")
    >>> suite.behavior, suite.control
    ('harmful', 'harmless')
    >>> len(suite.prompts("harmful", "train")) > 100
    True
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerlab._paths import REPO_ROOT, shared_dir
from steerlab.errors import SpecError
from steerlab.models.handle import ModelHandle
from steerlab.models.load import is_organism
from steerlab.values import check_count, read_json

SUITES_DIR = REPO_ROOT / "suites"
SUITE_FILE = "suite.json"
FORMAT = "steerlab.suites"
LEGACY_FORMAT = "steerlab.probes"  # suites written before the rename (linear probes are steering's)


@dataclass(frozen=True)
class ProbeItem:
    """One prompt with its label, split and where it came from."""

    text: str
    label: str
    split: str
    source: str


@dataclass
class ProbeSuite:
    """A validated prompt suite. ``behavior`` is the label that elicits the behavior, ``control`` the contrast."""

    name: str
    version: str
    description: str
    labels: dict[str, str]
    behavior: str
    control: str
    splits: list[str]
    items: list[ProbeItem]
    chat: bool = True
    system: str | None = None
    user_template: str = "{prompt}"
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def prompts(self, label: str, split: str | None = None) -> list[str]:
        """Raw prompt texts of ``label`` (and ``split``; ``None``: every split)."""
        if label not in self.labels:
            raise SpecError(f"suite {self.name!r} has no label {label!r}; labels: {sorted(self.labels)}")
        if split is not None and split not in self.splits:
            raise SpecError(f"suite {self.name!r} has no split {split!r}; splits: {self.splits}")
        return [it.text for it in self.items if it.label == label and (split is None or it.split == split)]

    def user_texts(self, label: str, split: str | None = None) -> list[str]:
        """Prompts after the suite's ``user_template`` (the user turn a model sees)."""
        return [self.user_template.format(prompt=p) for p in self.prompts(label, split)]

    def contrast(self, split: str | None = None, limit: int | None = None) -> tuple[list[str], list[str]]:
        """``(behavior, control)`` user texts of one split, at most ``limit`` (>= 1, or None: all) of each."""
        check_count("limit", limit, 1, none_ok=True)
        return self.user_texts(self.behavior, split)[:limit], self.user_texts(self.control, split)[:limit]

    def chat_kwargs(self) -> dict[str, Any]:
        """How to run the suite's user texts: ``chat``/``system`` arguments for capture and generate."""
        return {"chat": self.chat, "system": self.system}

    def model_inputs(self, h: ModelHandle, label: str, split: str | None = None) -> list[str]:
        """The full texts ``h`` sees (through its chat template when the suite asks for it), for display."""
        texts = self.user_texts(label, split)
        return [h.format_chat(t, system=self.system) for t in texts] if self.chat else texts

    def describe(self) -> dict[str, Any]:
        """Counts per label and split, for artifacts and the CLI."""
        counts = {lab: {sp: len(self.prompts(lab, sp)) for sp in self.splits} for lab in self.labels}
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "behavior": self.behavior,
            "control": self.control,
            "labels": self.labels,
            "splits": self.splits,
            "counts": counts,
            "chat": self.chat,
            "path": str(self.path),
        }


def list_suites(root: Path = SUITES_DIR) -> list[str]:
    """Names of the suites under ``suites/``."""
    return sorted(p.parent.name for p in root.glob(f"*/{SUITE_FILE}"))


def load_suite(name_or_path: str | Path, root: Path = SUITES_DIR) -> ProbeSuite:
    """Load and validate a suite by name (a folder under ``suites/``) or by path (folder or suite.json)."""
    p = Path(name_or_path)
    if p.is_dir():
        p = p / SUITE_FILE
    elif not p.suffix:
        p = root / str(name_or_path) / SUITE_FILE
    if not p.exists():
        raise SpecError(f"prompt suite {str(name_or_path)!r} not found at {p}; available suites: {list_suites(root)}")
    return suite_from_dict(read_json(p, f"prompt suite file {str(p)!r}"), base_dir=p.parent)


def suite_from_dict(meta: dict[str, Any], base_dir: Path | None = None) -> ProbeSuite:
    """Build and validate a suite from its ``suite.json`` contents."""
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, LEGACY_FORMAT):
        raise SpecError(f'not a prompt suite: expected a JSON object with "format": "{FORMAT}"')
    name = meta.get("name") or "unnamed"
    labels = meta.get("labels")
    if not isinstance(labels, dict) or len(labels) < 2:
        raise SpecError(f"suite {name!r}: 'labels' must map at least two label names to descriptions, got {labels!r}")
    behavior, control = meta.get("behavior"), meta.get("control")
    for role, lab in (("behavior", behavior), ("control", control)):
        if lab not in labels:
            raise SpecError(f"suite {name!r}: {role} label {lab!r} is not among the labels {sorted(labels)}")
    splits = list(meta.get("splits") or ["train", "test"])
    sources = meta.get("sources")
    if not isinstance(sources, list) or not sources:
        raise SpecError(f"suite {name!r} is empty: expected a non-empty 'sources' list")
    items: list[ProbeItem] = []
    for i, src in enumerate(sources):
        items += _read_source(name, i, src, labels, splits, base_dir)
    items = list(dict.fromkeys(items))  # a prompt listed twice with the same label and split counts once
    _validate(name, items, labels, splits)
    return ProbeSuite(
        name=name,
        version=str(meta.get("version", "0")),
        description=meta.get("description", ""),
        labels=labels,
        behavior=behavior,
        control=control,
        splits=splits,
        items=items,
        chat=bool(meta.get("chat", True)),
        system=meta.get("system"),
        user_template=meta.get("user_template", "{prompt}"),
        path=base_dir,
        meta=meta,
    )


def _resolve(path: str, base_dir: Path | None) -> Path:
    if path.startswith("shared:"):
        return shared_dir() / path.removeprefix("shared:")
    return (base_dir or Path(".")) / path


def _read_rows(file: Path, fmt: str) -> list[Any]:
    if fmt == "txt":
        return [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if fmt == "json":
        rows = json.loads(file.read_text())
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    elif fmt == "csv":
        with open(file, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise SpecError(f"unknown source format {fmt!r}; expected txt, json, jsonl or csv")
    return rows


def _field(rows: list[Any], fld: str | None, file: Any) -> list[Any]:
    if fld is None:
        return [str(r).strip() for r in rows]
    try:
        return [r[fld] for r in rows]
    except (KeyError, TypeError) as e:
        raise SpecError(f"source {file} has rows without the field {fld!r}") from e


def _read_source(
    name: str, i: int, src: Any, labels: dict, splits: list[str], base_dir: Path | None
) -> list[ProbeItem]:
    where = f"suite {name!r} source {i}"
    if not isinstance(src, dict):
        raise SpecError(f"{where} must be a JSON object, got {type(src).__name__}")
    label = src.get("label")
    if label is None:
        raise SpecError(f"{where} is unlabeled: every source needs a 'label' (one of {sorted(labels)})")
    if label not in labels:
        raise SpecError(f"{where} has label {label!r}, which is not declared; labels: {sorted(labels)}")
    if "prompts" in src:
        rows, origin = list(src["prompts"]), "inline"
        texts = [str(t).strip() for t in rows]
    elif "path" in src:
        file = _resolve(src["path"], base_dir)
        if not file.exists():
            raise SpecError(f"{where}: file {str(file)!r} does not exist")
        fmt = src.get("format") or file.suffix.lstrip(".")
        rows, origin = _read_rows(file, fmt), src["path"]
        texts = [str(t).strip() for t in _field(rows, src.get("field"), file)]
    else:
        raise SpecError(f"{where} needs 'prompts' (inline) or 'path' (a file)")
    if "split_by_id" in src:
        return _split_by_id(where, src["split_by_id"], rows, texts, label, splits, origin)
    texts = list(dict.fromkeys(t for t in texts if t))
    if "split" in src:
        if src["split"] not in splits:
            raise SpecError(f"{where} has split {src['split']!r}; expected one of {splits}")
        return [ProbeItem(t, label, src["split"], origin) for t in texts]
    sizes = src.get("split_sizes")
    if not isinstance(sizes, dict):
        raise SpecError(f"{where} needs 'split' (one split) or 'split_sizes' ({{split: count}})")
    bad = [s for s in sizes if s not in splits]
    if bad:
        raise SpecError(f"{where}: split_sizes names unknown splits {bad}; expected {splits}")
    order = sorted(texts, key=lambda t: hashlib.sha256(t.encode()).hexdigest())
    random.Random(int(src.get("seed", 0))).shuffle(order)
    need = sum(int(n) for n in sizes.values())
    if need > len(order):
        raise SpecError(f"{where}: split_sizes ask for {need} prompts but the source has {len(order)}")
    out, start = [], 0
    for sp, n in sizes.items():
        out += [ProbeItem(t, label, sp, origin) for t in order[start : start + int(n)]]
        start += int(n)
    return out


def _split_by_id(
    where: str, rule: Any, rows: list[Any], texts: list[str], label: str, splits: list[str], origin: str
) -> list[ProbeItem]:
    """Split by an integer id field: ``id % modulo`` picks the split (stable when rows are added)."""
    if not isinstance(rule, dict) or not {"field", "modulo", "splits"} <= set(rule):
        raise SpecError(
            f"{where}: split_by_id needs 'field', 'modulo' and 'splits' ({{split: [residues]}}), got {rule!r}"
        )
    bad = [s for s in rule["splits"] if s not in splits]
    if bad:
        raise SpecError(f"{where}: split_by_id names unknown splits {bad}; expected {splits}")
    residue_to_split = {int(r): sp for sp, rs in rule["splits"].items() for r in rs}
    ids = _field(rows, rule["field"], origin)
    out = []
    for t, i in zip(texts, ids, strict=True):
        sp = residue_to_split.get(int(i) % int(rule["modulo"]))
        if t and sp is not None:
            out.append(ProbeItem(t, label, sp, origin))
    return out


def _validate(name: str, items: list[ProbeItem], labels: dict, splits: list[str]) -> None:
    where: dict[str, str] = {}
    for it in items:
        prev = where.setdefault(it.text, it.split)
        if prev != it.split:
            raise SpecError(f"suite {name!r}: prompt {it.text[:60]!r} is in both the {prev!r} and {it.split!r} splits")
    seen_label: dict[str, str] = {}
    for it in items:
        prev = seen_label.setdefault(it.text, it.label)
        if prev != it.label:
            raise SpecError(f"suite {name!r}: prompt {it.text[:60]!r} has two labels, {prev!r} and {it.label!r}")
    for lab in labels:
        for sp in splits:
            if not any(it.label == lab and it.split == sp for it in items):
                raise SpecError(f"suite {name!r}: label {lab!r} has no prompts in split {sp!r}")


def default_suite(h: ModelHandle) -> str:
    """The suite an analysis of ``h`` uses unless told otherwise: ``organism-refusal`` on a model
    organism (its trained behavior is ground truth there), ``refusal`` on any other model."""
    return "organism-refusal" if is_organism(h) else "refusal"
