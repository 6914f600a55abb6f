"""Interventions: specs (serializable), pure ops, and the hook runtime that applies them."""

from steerlab.interventions.apply import InterventionContext, intervene
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
    "InterventionContext",
    "InterventionSet",
    "LastK",
    "ParamEdit",
    "Patch",
    "ProjectOut",
    "ScaleUnits",
    "as_set",
    "intervene",
    "parse_intervention",
]
