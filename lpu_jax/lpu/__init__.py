"""The LPU cycle model: hardware descriptions, the compiler pass that schedules a jaxpr onto a
chip's units and the chip-to-chip network, and the figures a deployment would reach.

    from lpu_jax import lpu
    result = lpu.schedule(fn, *example_args, hardware="lpu-v1")
    result.ticks, result.seconds, result.bottleneck()
"""

from lpu_jax.lpu.deployment import CycleModel, Deployment
from lpu_jax.lpu.hardware import load_hardware
from lpu_jax.lpu.perfetto import write_trace
from lpu_jax.lpu.scheduler import Schedule, schedule

__all__ = ["CycleModel", "Deployment", "Schedule", "load_hardware", "schedule", "write_trace"]
