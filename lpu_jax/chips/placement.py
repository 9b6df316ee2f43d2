"""Placing the per-chip program on JAX devices.

One program is written per chip, with collectives over the chip axes (pp, tp). It runs either with
one chip per device (`jax.shard_map` over a device mesh of the same shape) or with all chips folded
onto one device, stage by stage (chips/folded.py: each stage's chips under `jax.vmap` over the tp
axis, which gives psum and axis_index the same meaning). The number of emulated chips never
depends on the number of devices.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lpu_jax.chips.layout import Layout
from lpu_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the chips of a layout live: `folded` means all of them on devices[0]."""

    layout: Layout
    devices: tuple[jax.Device, ...]
    folded: bool

    @classmethod
    def choose(cls, layout: Layout, fold: bool | None = None,
               devices: list[jax.Device] | None = None) -> "Placement":
        """One chip per device when there are enough devices (unless fold=True); else folded.

        With several processes (jax.distributed) the chips are spread over every process's
        devices, one chip per device: folding cannot span processes.
        """
        devices = list(devices or jax.devices())
        processes = jax.process_count()
        if fold is None:
            fold = len(devices) < layout.num_chips and processes == 1
        if fold and processes > 1:
            raise UserError(f"chips cannot be folded across {processes} processes; give the "
                            f"processes {layout.num_chips} devices in all, one per chip")
        if not fold and len(devices) < layout.num_chips:
            raise UserError(f"{layout.num_chips} chips need {layout.num_chips} devices to run "
                            f"one chip per device; there are {len(devices)}")
        return cls(layout, tuple(devices[:1] if fold else devices[:layout.num_chips]), fold)

    def free_bytes(self) -> int | None:
        """Memory free for the chips of one of this process's devices: an accelerator's (its
        allocator's limit less what is in use), or on CPU the host's available memory, which
        every CPU device shares. None where it cannot be read."""
        device = next((d for d in self.devices if d.process_index == jax.process_index()),
                      self.devices[0])
        if not self.on_cpu:
            try:
                stats = device.memory_stats() or {}
            except Exception:  # a backend that keeps no statistics
                return None
            limit = stats.get("bytes_limit")
            return None if limit is None else limit - stats.get("bytes_in_use", 0)
        try:
            with open("/proc/meminfo") as meminfo:
                fields = dict(line.split(":", 1) for line in meminfo)
            return int(fields["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            return None

    @property
    def on_cpu(self) -> bool:
        return self.devices[0].platform == "cpu"

    def describe(self) -> dict:
        return {"tp": self.layout.tp, "pp": self.layout.pp, "ep": self.layout.ep,
                "chips": self.layout.num_chips,
                "folded": self.folded, "devices": len(self.devices),
                "platform": self.devices[0].platform}

    @property
    def _names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.layout.axes)

    @property
    def mesh(self) -> Mesh:
        shape = tuple(size for _, size in self.layout.axes)
        return Mesh(np.array(self.devices).reshape(shape), self._names)

    def chip_sharding(self) -> jax.sharding.Sharding:
        """How a pytree stacked along the leading chip axes is laid out on the devices."""
        if self.folded:
            return jax.sharding.SingleDeviceSharding(self.devices[0])
        return NamedSharding(self.mesh, PartitionSpec(*self._names))

    def put(self, stacked):
        """Place a pytree stacked on the chip axes (each device gets its chip's slice), or,
        folded, any pytree (on the one device).

        Built slice by slice from host values, which also works when the devices belong to
        several processes (each process fills its own devices from the same values).
        """
        sharding = self.chip_sharding()
        if self.folded:
            return jax.device_put(stacked, sharding)

        def place(leaf):
            host = np.asarray(leaf)
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
        return jax.tree.map(place, stacked)

    def run_per_chip(self, per_chip: Callable, num_replicated_outputs: int) -> Callable:
        """Lift per_chip(chip_params, chip_state, *shared_args) -> (*replicated, chip_state) onto
        one chip per device (shard_map); folded chips run chips/folded.py instead.

        The result takes the stacked params and state (leading chip axes) and the shared
        arguments, and returns the replicated outputs (the same on every chip, taken once) and
        the new stacked state.
        """
        if self.folded:
            raise ValueError("folded chips run the stage-by-stage program of chips/folded.py")
        n, depth = num_replicated_outputs, len(self._names)

        def one_chip(params, state, *shared):
            unstack = lambda tree: jax.tree.map(lambda a: a.reshape(a.shape[depth:]), tree)  # noqa: E731
            outs = per_chip(unstack(params), unstack(state), *shared)
            return (*outs[:n], jax.tree.map(lambda a: a.reshape((1,) * depth + a.shape), outs[n]))

        chips, shared_spec = PartitionSpec(*self._names), PartitionSpec()

        def sharded(params, state, *shared):
            return jax.shard_map(one_chip, mesh=self.mesh,
                                 in_specs=(chips, chips) + (shared_spec,) * len(shared),
                                 out_specs=(shared_spec,) * n + (chips,),
                                 check_vma=False)(params, state, *shared)
        return sharded
