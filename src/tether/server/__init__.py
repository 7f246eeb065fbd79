"""The Tether hub: topics with history, fan-out, resume, handlers, heartbeats."""

from .hub import Hub
from .messages import Incoming
from .stats import HubStats

__all__ = ["Hub", "HubStats", "Incoming"]
