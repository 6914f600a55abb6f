"""Pairwise preference data: pairs of responses to one prompt, each judge's label, property annotations.

A :class:`Pair` holds a prompt, responses A and B, one label per judge (``"A"`` or ``"B"``), its scenario
(and any query-specific cases) and the property annotations of both responses (a score per property
for A and for B). A :class:`PairSet` is a list of pairs; :meth:`PairSet.features` turns it into the
per-property comparisons ``sign(score_A - score_B)`` in {-1, 0, 1} that the fit reads.

Loaders:

* :func:`load_published` -- the fitted weights of Li et al. 2024 (33 judges x 29 properties in 16 groups),
  read exactly as the files hold them (``PublishedWeights``).
* :func:`load_published_pairs` -- the 5,240 pairs of the paper as label-only pairs (human label, scenario,
  query-specific cases; no text: the annotated texts were not released with the viewer).
* :func:`load_hh_rlhf` -- Anthropic HH-RLHF chosen/rejected dialogues as pairs (the shared prompt and the
  two final assistant turns; A/B order alternates so the human label is not always ``"A"``).
* :func:`read_pairs_jsonl` -- a user's own data, one JSON object per line (format in docs/preferences.md):
  malformed lines are reported with their line number and skipped (``on_error="skip"``) or rejected
  (``on_error="raise"``); nothing is dropped silently.

The preference-dissection files are CC-BY-NC-4.0 (Li, Zhou, Sun, Zhang, Zhao, Liu, "Dissecting Human and
LLM Preferences", ACL 2024, arXiv:2402.11296; github.com/GAIR-NLP/Preference-Dissection): non-commercial
use, with attribution (:data:`PUBLISHED_ATTRIBUTION`).

Example:
    >>> pw = load_published()
    >>> len(pw.judges), len(pw.properties), len(pw.groups)
    (33, 29, 16)
    >>> round(pw.weight("Advice", "human", "contain rich info"), 3)
    0.598
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from steerlab._paths import shared_dir
from steerlab.errors import SteerlabError

#: The 29 properties of Li et al. 2024, in the order of their fitted weight vectors (``feature_name_to_id``).
PAPER_PROPERTIES: tuple[str, ...] = (
    "harmless", "grammarly correct", "friendly", "polite", "interactive", "authoritative", "funny",
    "use rhetorical devices", "complex word & sentence", "use supporting materials", "well formatted",
    "admit limits", "persuasive", "step-by-step", "use informal expressions", "non-repetitive", "clear",
    "relevant", "novel", "contain rich info", "no minor errors", "no moderate errors", "no severe errors",
    "clarify intent", "show empathetic", "satisfy constraints", "support stances", "correct mistakes", "lengthy",
)
#: The 11 scenarios (each pair has one) and 5 query-specific cases (overlapping subsets) of the paper.
SCENARIOS: tuple[str, ...] = (
    "Advice", "Code", "Communication", "Creative Writing", "Daily Tasks", "Exam Questions", "Functional Writing",
    "Knowledge-aware", "NLP Tasks", "Others", "Unsafe Queries",
)
QUERY_CASES: tuple[str, ...] = ("express_feeling", "intent_unclear", "w_constraints", "w_mistakes", "w_stances")
LABELS: tuple[str, ...] = ("A", "B")
PUBLISHED_ATTRIBUTION = (
    "Preference-dissection data: Li et al., 'Dissecting Human and LLM Preferences', ACL 2024 (arXiv:2402.11296), "
    "github.com/GAIR-NLP/Preference-Dissection; CC-BY-NC-4.0 (non-commercial use, with attribution)."
)


def published_dir() -> Path:
    """The shared folder holding the preference-dissection files."""
    return shared_dir() / "data" / "preference-dissection"


@dataclass
class Pair:
    """One comparison: ``prompt``, ``response_a``, ``response_b``; ``labels`` maps a judge to ``"A"``/``"B"``;
    ``scenario`` and ``cases`` (query-specific groups) place it in groups; ``annotations`` maps a property to
    ``(score of A, score of B)``."""

    id: str
    prompt: str = ""
    response_a: str = ""
    response_b: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    scenario: str = ""
    cases: tuple[str, ...] = ()
    annotations: dict[str, tuple[float, float]] = field(default_factory=dict)

    def in_group(self, group: str) -> bool:
        """Whether the pair belongs to ``group`` (``"all"``, its scenario, or one of its cases)."""
        return group == "all" or group == self.scenario or group in self.cases

    def to_json(self) -> dict[str, Any]:
        """The pair as one line of the documented JSONL format."""
        return {"id": self.id, "prompt": self.prompt, "response_a": self.response_a, "response_b": self.response_b,
                "scenario": self.scenario, "cases": list(self.cases), "labels": dict(self.labels),
                "annotations": {k: [a, b] for k, (a, b) in self.annotations.items()}}


def comparison(a: float, b: float) -> int:
    """``sign(a - b)`` in {-1, 0, 1}: +1 when A scores higher on the property."""
    return (a > b) - (a < b)


@dataclass
class PairSet:
    """Pairs plus what is known about them: the judges that labelled them and the annotated properties."""

    pairs: list[Pair]

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def judges(self) -> list[str]:
        """Judges with a label on at least one pair, in first-seen order."""
        return list(dict.fromkeys(j for p in self.pairs for j in p.labels))

    @property
    def properties(self) -> list[str]:
        """Annotated properties, in first-seen order."""
        return list(dict.fromkeys(k for p in self.pairs for k in p.annotations))

    @property
    def groups(self) -> list[str]:
        """``"all"``, then the scenarios and cases present, in first-seen order."""
        seen = dict.fromkeys(g for p in self.pairs for g in ((p.scenario,) if p.scenario else ()) + p.cases)
        return ["all", *seen]

    def subset(self, group: str = "all", judge: str | None = None) -> PairSet:
        """The pairs in ``group`` (labelled by ``judge`` if given)."""
        return PairSet([p for p in self.pairs if p.in_group(group) and (judge is None or judge in p.labels)])

    def features(self, properties: Sequence[str] | None = None) -> torch.Tensor:
        """``[n_pairs, n_properties]`` float tensor of ``sign(A - B)`` per property (0 where unannotated)."""
        props = list(properties) if properties is not None else self.properties
        x = torch.zeros(len(self.pairs), len(props))
        for i, p in enumerate(self.pairs):
            for j, k in enumerate(props):
                if k in p.annotations:
                    x[i, j] = comparison(*p.annotations[k])
        return x

    def labels(self, judge: str) -> torch.Tensor:
        """``[n_pairs]`` float tensor, 1 where ``judge`` prefers A (every pair must carry the judge's label)."""
        missing = [p.id for p in self.pairs if judge not in p.labels]
        if missing:
            raise SteerlabError(f"judge {judge!r} has no label on {len(missing)} pairs (first: {missing[0]!r}); "
                                f"expected a label on every pair (use subset(judge=...))")
        return torch.tensor([1.0 if p.labels[judge] == "A" else 0.0 for p in self.pairs])

    def write_jsonl(self, path: str | Path) -> Path:
        """Write the pairs in the documented JSONL format (atomically)."""
        from steerlab.atomic import atomic_write_text

        return atomic_write_text(path, "".join(json.dumps(p.to_json()) + "\n" for p in self.pairs))


# -- the published fitted weights ------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishedWeights:
    """The released fitted weights: ``weights[group][judge]`` is a list of 29 floats in
    :data:`PAPER_PROPERTIES` order, exactly as read from ``model_<group>_fitted_paras.jsonl``."""

    weights: dict[str, dict[str, list[float]]]
    properties: tuple[str, ...] = PAPER_PROPERTIES

    @property
    def groups(self) -> list[str]:
        return list(self.weights)

    @property
    def judges(self) -> list[str]:
        return list(next(iter(self.weights.values())))

    def weight(self, group: str, judge: str, prop: str) -> float:
        """One weight (raises :class:`SteerlabError` naming an unknown group, judge or property)."""
        return self.vector(group, judge)[_index(self.properties, prop, "property")]

    def vector(self, group: str, judge: str) -> list[float]:
        if group not in self.weights:
            raise SteerlabError(f"unknown group {group!r}; expected one of {self.groups}")
        if judge not in self.weights[group]:
            raise SteerlabError(f"unknown judge {judge!r}; expected one of {self.judges}")
        return self.weights[group][judge]

    def tensor(self, groups: Sequence[str] | None = None, judges: Sequence[str] | None = None) -> torch.Tensor:
        """``[n_groups, n_judges, 29]`` float64 tensor of the weights (all groups and judges by default)."""
        gs, js = groups or self.groups, judges or self.judges
        return torch.tensor([[self.vector(g, j) for j in js] for g in gs], dtype=torch.float64)


def _index(names: Sequence[str], name: str, what: str) -> int:
    try:
        return list(names).index(name)
    except ValueError:
        raise SteerlabError(f"unknown {what} {name!r}; expected one of {list(names)}") from None


def load_published(root: str | Path | None = None) -> PublishedWeights:
    """Read the 16 ``fitted_paras_comparison/model_<group>_fitted_paras.jsonl`` files (scenarios, then cases)."""
    folder = Path(root) if root is not None else published_dir()
    out: dict[str, dict[str, list[float]]] = {}
    for group in SCENARIOS + QUERY_CASES:
        f = folder / "fitted_paras_comparison" / f"model_{group}_fitted_paras.jsonl"
        if not f.exists():
            raise SteerlabError(f"published weights file {f} not found; expected the preference-dissection data")
        rows: dict[str, list[float]] = {}
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name, params = row["model_name"], [float(v) for v in row["parameters"]]
            except (ValueError, KeyError, TypeError) as e:
                raise SteerlabError(f"{f}:{n}: expected {{'model_name': str, 'parameters': [29 floats]}} ({e})") from e
            if len(params) != len(PAPER_PROPERTIES):
                raise SteerlabError(f"{f}:{n}: {len(params)} parameters; expected {len(PAPER_PROPERTIES)}")
            rows[name] = params
        out[group] = rows
    return PublishedWeights(out)


def load_published_pairs(root: str | Path | None = None) -> PairSet:
    """The paper's 5,240 pairs as label-only pairs: the human label (``example_preference_labels.json``),
    the scenario and the query-specific cases (``query_aware_idxs.json``). No texts or annotations."""
    folder = Path(root) if root is not None else published_dir()
    labels = json.loads((folder / "example_preference_labels.json").read_text())
    idxs = json.loads((folder / "query_aware_idxs.json").read_text())
    bad = sorted({lab for lab in labels if lab not in LABELS})
    if bad:
        raise SteerlabError(f"human labels hold {bad}; expected only {list(LABELS)}")
    pairs = [Pair(id=str(i), labels={"human": lab}) for i, lab in enumerate(labels)]
    for group, members in idxs.items():
        if group == "all":
            continue
        for i in members:
            if group in SCENARIOS:
                pairs[i].scenario = group
            else:
                pairs[i].cases += (group,)
    return PairSet(pairs)


# -- HH-RLHF ----------------------------------------------------------------------------------------------
def split_dialogue(text: str) -> tuple[str, str]:
    """``(context, final assistant turn)`` of an HH-RLHF dialogue (``"\\n\\nHuman: ... \\n\\nAssistant: ..."``)."""
    cut = text.rfind("\n\nAssistant:")
    if cut < 0:
        raise SteerlabError(f"dialogue has no '\\n\\nAssistant:' turn: {text[:60]!r}")
    return text[:cut].strip(), text[cut + len("\n\nAssistant:"):].strip()


def load_hh_rlhf(path: str | Path | None = None, *, n: int | None = None, seed: int = 0,
                 judge: str = "human", problems: list[RowProblem] | None = None) -> PairSet:
    """HH-RLHF chosen/rejected pairs (harmless-base test split by default), the first ``n`` usable lines.

    The prompt is the dialogue up to the final assistant turn (the two dialogues share it); the responses are
    the two final turns. A/B order is drawn per pair with ``seed`` (so position carries no signal) and
    ``labels[judge]`` names the chosen one. A line whose dialogues differ before the last turn, or whose final
    turn is empty, raises :class:`SteerlabError` naming its line; with a ``problems`` list it is skipped and
    recorded there instead (nothing is dropped silently).
    """
    f = Path(path) if path is not None else shared_dir() / "data" / "hh_rlhf" / "harmless-base_test.jsonl"
    rng = random.Random(seed)
    pairs: list[Pair] = []
    with open(f) as fh:
        for n_line, line in enumerate(fh, 1):
            if n is not None and len(pairs) >= n:
                break
            row = json.loads(line)
            ctx_c, chosen = split_dialogue(row["chosen"])
            ctx_r, rejected = split_dialogue(row["rejected"])
            swap = rng.random() < 0.5
            msg = ("chosen and rejected dialogues differ before the last turn" if ctx_c != ctx_r else
                   "the chosen final turn is empty" if not chosen else
                   "the rejected final turn is empty" if not rejected else "")
            if msg:
                if problems is None:
                    raise SteerlabError(f"{f}:{n_line}: {msg} (pass problems=[] to skip such lines)")
                problems.append(RowProblem(n_line, msg))
                continue
            a, b = (rejected, chosen) if swap else (chosen, rejected)
            pairs.append(Pair(id=f"hh-{n_line}", prompt=ctx_c, response_a=a, response_b=b,
                              labels={judge: "B" if swap else "A"}, scenario="harmless-base"))
    return PairSet(pairs)


# -- the user's JSONL -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowProblem:
    """A malformed line of a JSONL file: its 1-based ``line`` number and what is wrong."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def _check_row(row: Any, known: set[str] | None) -> tuple[Pair | None, str]:
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}"
    for key in ("prompt", "response_a", "response_b"):
        if not isinstance(row.get(key), str) or (key != "prompt" and not row[key].strip()):
            return None, f"missing or empty {key!r}; expected a non-empty string"
    labels = row.get("labels", {})
    if not isinstance(labels, dict):
        return None, f"'labels' must map judge names to 'A' or 'B', got {labels!r}"
    bad = {j: v for j, v in labels.items() if v not in LABELS}
    if bad:
        return None, f"labels {bad} outside the allowed set {list(LABELS)}"
    ann = row.get("annotations", {})
    if not isinstance(ann, dict):
        return None, f"'annotations' must map property names to [score_a, score_b], got {ann!r}"
    annotations: dict[str, tuple[float, float]] = {}
    for k, v in ann.items():
        if known is not None and k not in known:
            return None, f"unknown property {k!r}; expected one of {sorted(known)}"
        if (not isinstance(v, list) or len(v) != 2 or not all(isinstance(s, int | float) and not isinstance(s, bool)
                                                                  and math.isfinite(s) for s in v)):
            return None, f"annotation {k!r} is {v!r}; expected [score_a, score_b] (two finite numbers)"
        annotations[k] = (float(v[0]), float(v[1]))
    cases = row.get("cases", [])
    if not isinstance(cases, list) or not all(isinstance(c, str) for c in cases):
        return None, f"'cases' must be a list of group names, got {cases!r}"
    return Pair(id=str(row.get("id", "")), prompt=row["prompt"], response_a=row["response_a"],
                response_b=row["response_b"], labels=dict(labels), scenario=str(row.get("scenario", "") or ""),
                cases=tuple(cases), annotations=annotations), ""


def read_pairs_jsonl(path: str | Path, *, on_error: Literal["skip", "raise"] = "raise",
                     properties: Iterable[str] | None = None) -> tuple[PairSet, list[RowProblem]]:
    """Read pairs from a JSONL file; returns the pairs and the problems found (line numbers from 1).

    ``on_error="raise"`` stops at the first malformed line with a :class:`SteerlabError` naming it;
    ``"skip"`` leaves malformed lines out and lists each in the returned problems. ``properties`` (when
    given) is the set of allowed property names; an annotation outside it is a malformed row. Blank lines
    are ignored; a pair without an ``id`` gets ``"line-N"``.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "p.jsonl"
        >>> _ = f.write_text('{"prompt": "q", "response_a": "x", "response_b": "y", "labels": {"me": "A"}}\\n'
        ...                  '{"prompt": "q", "response_a": "x", "response_b": "y", "labels": {"me": "C"}}\\n')
        >>> ps, problems = read_pairs_jsonl(f, on_error="skip")
        >>> len(ps), [str(p) for p in problems]
        (1, ["line 2: labels {'me': 'C'} outside the allowed set ['A', 'B']"])
    """
    if on_error not in ("skip", "raise"):
        raise SteerlabError(f"on_error={on_error!r}; expected 'skip' or 'raise'")
    f = Path(path)
    if not f.is_file():
        raise SteerlabError(f"pairs file {f} not found; expected a JSONL file")
    known = set(properties) if properties is not None else None
    pairs: list[Pair] = []
    problems: list[RowProblem] = []
    seen: set[str] = set()
    for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pair, msg = _check_row(row, known)
        except json.JSONDecodeError as e:
            pair, msg = None, f"not valid JSON ({e.msg} at column {e.colno})"
        if pair is not None:
            pair.id = pair.id or f"line-{n}"
            if pair.id in seen:
                pair, msg = None, f"duplicate id {pair.id!r}"
        if pair is None:
            problems.append(RowProblem(n, msg))
            if on_error == "raise":
                raise SteerlabError(f"{f}: {problems[-1]} (pass on_error='skip' to skip malformed lines)")
            continue
        seen.add(pair.id)
        pairs.append(pair)
    return PairSet(pairs), problems
