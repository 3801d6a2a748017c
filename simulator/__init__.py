"""sigsim's analytic simulator: predict a method's cost on a hardware profile, calibrate a
profile on this machine, and validate predictions against the profiler's measurements.

``simulator.predict(method, world, batch, dim, dtype="fp32", hardware=None, **options)``
is the entry point (see :mod:`simulator.model` for the formulas); ``sigsim predict | calibrate |
validate | profiles`` (:mod:`experiments.cli`) the command line.
"""

from simulator.hardware import Hardware, HardwareError, load_profile, resolve_hardware
from simulator.model import Prediction, predict
from simulator.simulate import Simulation, simulate

__all__ = [
    "Hardware",
    "HardwareError",
    "Prediction",
    "Simulation",
    "load_profile",
    "predict",
    "resolve_hardware",
    "simulate",
]
