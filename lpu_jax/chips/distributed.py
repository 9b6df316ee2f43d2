"""Joining a deployment that spans several processes (jax.distributed), and emulated CPU devices.

Both must happen before JAX runs anything. Across processes the chips are spread one per device
over every process's devices; each process runs the same program on the same inputs and the
collectives cross process boundaries (gloo on CPU).
"""

from __future__ import annotations

from lpu_jax.errors import UserError


MAX_CPU_DEVICES = 4096  # each is a thread pool and buffers: beyond this a host runs out


def start(cpu_devices: int | None = None, coordinator: str | None = None,
          num_processes: int = 1, process_id: int = 0) -> None:
    import jax

    if cpu_devices is not None:
        if not 1 <= cpu_devices <= MAX_CPU_DEVICES:
            raise UserError(f"--cpu_devices must be in [1, {MAX_CPU_DEVICES}], got {cpu_devices} "
                            "(more chips than that fold onto fewer devices: --fold)")
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    if num_processes < 1:
        raise UserError(f"--num_processes must be >= 1, got {num_processes}")
    if num_processes == 1:
        return
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process_id must be in [0, {num_processes}), got {process_id}")
    if not coordinator:
        raise UserError("several processes need --coordinator HOST:PORT (process 0's address)")
    host, _, port = coordinator.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise UserError(f"--coordinator must be HOST:PORT with a port in 1-65535, got "
                        f"{coordinator!r}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
