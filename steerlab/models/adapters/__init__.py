"""Architecture adapters (the one place for architecture quirks)."""

from steerlab.models.adapters.base import Adapter, LayerParts
from steerlab.models.adapters.families import ADAPTERS, adapter_for
from steerlab.models.adapters.routing import RoutingRule, route

__all__ = ["ADAPTERS", "Adapter", "LayerParts", "RoutingRule", "adapter_for", "route"]
