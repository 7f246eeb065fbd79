"""Tether clients: the sans-I/O session and state machine, and the asyncio driver."""

from .aio import Client, ClientMetrics
from .session import Delivery
from .state import State

__all__ = ["Client", "ClientMetrics", "Delivery", "State"]
