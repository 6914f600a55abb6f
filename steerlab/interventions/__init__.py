"""Interventions: specs (serializable), pure ops, compilation into a plan, reversible weight edits.

``steerlab.intervene`` (one level up) runs a validated list over several calls."""

from steerlab.interventions.spec import (
    AddVector,
    ExpertMask,
    InterventionSet,
    LastK,
    ParamEdit,
    Patch,
    ProjectOut,
    ScaleUnits,
    as_set,
    parse_intervention,
)

__all__ = [
    "AddVector",
    "ExpertMask",
    "InterventionSet",
    "LastK",
    "ParamEdit",
    "Patch",
    "ProjectOut",
    "ScaleUnits",
    "as_set",
    "parse_intervention",
]
