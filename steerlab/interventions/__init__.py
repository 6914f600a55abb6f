"""Interventions: serializable types in a registry, pure ops, compilation into a plan, reversible
weight edits. A new type is one class registered with :func:`register_intervention` (see
:mod:`steerlab.interventions.base`). ``steerlab.intervene`` (one level up) runs a validated list
over several calls."""

from steerlab.interventions.activation import AddVector, Patch, ProjectOut, ScaleUnits
from steerlab.interventions.base import (
    ActOp,
    Intervention,
    LastK,
    SiteIntervention,
    intervention_types,
    parse_intervention,
    register_intervention,
)
from steerlab.interventions.conditional import ConditionalAdd
from steerlab.interventions.regions import RegionEdit
from steerlab.interventions.routing import ExpertMask
from steerlab.interventions.spec import InterventionSet, as_set
from steerlab.interventions.weights import ParamEdit

__all__ = [
    "ActOp",
    "AddVector",
    "ConditionalAdd",
    "ExpertMask",
    "Intervention",
    "InterventionSet",
    "LastK",
    "ParamEdit",
    "Patch",
    "ProjectOut",
    "RegionEdit",
    "ScaleUnits",
    "SiteIntervention",
    "as_set",
    "intervention_types",
    "parse_intervention",
    "register_intervention",
]
