"""A faithful Vipps MobilePay simulator (test environment "MT") as its own ASGI app.

``create_simulator_app(config)`` builds it; ``app.state.simulator`` is the engine tests drive
directly. ``python -m app.simulator --port 8081`` runs it standalone. See docs/simulator.md.
"""

from app.simulator.app import create_simulator_app
from app.simulator.clock import ManualClock, SystemClock
from app.simulator.config import CredentialSet, SalesUnit, SimulatorConfig, TestUser, approved
from app.simulator.engine import Simulator

__all__ = [
    "CredentialSet",
    "ManualClock",
    "SalesUnit",
    "Simulator",
    "SimulatorConfig",
    "SystemClock",
    "TestUser",
    "approved",
    "create_simulator_app",
]
