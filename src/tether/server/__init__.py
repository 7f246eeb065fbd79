"""The Tether hub: topics with history, fan-out, resume, handlers, heartbeats."""

from .hub import Hub, HubStats, Incoming

__all__ = ["Hub", "HubStats", "Incoming"]
