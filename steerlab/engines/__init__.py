"""Engines: the nnsight engine runs plans (interventions, records, generation); the TransformerLens
bridge engine records only. ``engine_for(h, name)`` returns a handle's engine."""

from steerlab.engines import bridge_engine, nnsight_engine  # noqa: F401  (register the engines)
from steerlab.engines.base import Engine, Records, engine_for, position_ids, register_engine

__all__ = ["Engine", "Records", "engine_for", "position_ids", "register_engine"]
