"""Placing the per-chip program on JAX devices.

One program is written per chip, with collectives over the axis named TP_AXIS. It runs either with
one chip per device (`jax.shard_map` over a device mesh) or with all chips folded onto one device
(`jax.vmap` with the same axis name, which gives psum / all_gather / axis_index the same meaning).
The number of emulated chips never depends on the number of devices.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lpu_jax.chips.layout import TP_AXIS, Layout


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the chips of a layout live: `folded` means all on devices[0]."""

    layout: Layout
    devices: tuple[jax.Device, ...]
    folded: bool

    @classmethod
    def choose(cls, layout: Layout, fold: bool | None = None,
               devices: list[jax.Device] | None = None) -> "Placement":
        """One chip per device when there are enough devices (unless fold=True); else folded."""
        devices = list(devices or jax.devices())
        if fold is None:
            fold = len(devices) < layout.num_chips
        return cls(layout, tuple(devices[:1] if fold else devices[:layout.num_chips]), fold)

    def describe(self) -> dict:
        return {"tp": self.layout.tp, "chips": self.layout.num_chips, "folded": self.folded,
                "devices": len(self.devices), "platform": self.devices[0].platform}

    @property
    def mesh(self) -> Mesh:
        return Mesh(np.array(self.devices), (TP_AXIS,))

    def chip_sharding(self) -> jax.sharding.Sharding:
        """How a pytree stacked along a leading chip axis is laid out on the devices."""
        if self.folded:
            return jax.sharding.SingleDeviceSharding(self.devices[0])
        return NamedSharding(self.mesh, PartitionSpec(TP_AXIS))

    def put(self, stacked):
        return jax.device_put(stacked, self.chip_sharding())

    def run_per_chip(self, per_chip: Callable, num_replicated_outputs: int) -> Callable:
        """Lift per_chip(chip_params, chip_state, *shared_args) -> (*replicated, chip_state).

        The result takes the stacked params and state (leading chip axis) and the shared
        arguments, and returns the replicated outputs (the same on every chip, taken once) and
        the new stacked state.
        """
        n = num_replicated_outputs
        if self.folded:
            def folded(params, state, *shared):
                outs = jax.vmap(per_chip, in_axes=(0, 0) + (None,) * len(shared),
                                axis_name=TP_AXIS)(params, state, *shared)
                return (*(o[0] for o in outs[:n]), outs[n])
            return folded

        def one_chip(params, state, *shared):
            squeeze = lambda tree: jax.tree.map(lambda a: a[0], tree)  # noqa: E731
            outs = per_chip(squeeze(params), squeeze(state), *shared)
            return (*outs[:n], jax.tree.map(lambda a: a[None], outs[n]))

        chips, shared_spec = PartitionSpec(TP_AXIS), PartitionSpec()

        def sharded(params, state, *shared):
            return jax.shard_map(one_chip, mesh=self.mesh,
                                 in_specs=(chips, chips) + (shared_spec,) * len(shared),
                                 out_specs=(shared_spec,) * n + (chips,),
                                 check_vma=False)(params, state, *shared)
        return sharded
