"""The chip-to-chip network: where each chip sits, how many hops apart two chips are, and what a
collective over some chip axes costs on the C2C links.

Chips are numbered along the deployment's axes, major first (for lpu-generate: chip = stage * tp +
tp index), and packed into nodes of `chips_per_node` fully connected chips and racks of
`nodes_per_rack` nodes. Two chips of one node are 1 hop apart; of one rack, `rack_hops` (an
estimate from the node and rack wiring); anywhere else, the dragonfly's `max_hops`.

Collectives are scheduled by the compiler over direct links, with no arbitration:
- all-reduce (psum, pmax, pmin) takes the cheaper of one phase (every chip sends its whole
  operand to every peer and reduces locally) and two (reduce-scatter, then all-gather of n/g);
- all_gather sends each chip's operand to every peer; reduce-scatter and all_to_all send n/g to
  each peer;
- ppermute sends the operand over one link to its peer, across the hops between them.
A phase costs the group's hop latency plus the bytes on its busiest link, in whole 320-byte
vectors, at the link bandwidth less the framing overhead. A chip reaches g - 1 peers over g - 1
direct links inside a node, and over its global links beyond one.
"""

from __future__ import annotations

import math

import numpy as np

from lpu_jax.lpu.hardware import HardwareSpec

ALL_REDUCE = ("psum", "psum_invariant", "pmax", "pmin")
SCATTERING = ("reduce_scatter", "psum_scatter", "all_to_all")
GATHERING = ("all_gather", "all_gather_invariant")
COLLECTIVES = ALL_REDUCE + SCATTERING + GATHERING + ("ppermute",)


class Network:
    """The chips of a deployment, laid out along named axes ((name, size), ..., major first)."""

    def __init__(self, hardware: HardwareSpec, axes: tuple[tuple[str, int], ...]):
        self.hw = hardware
        self.names = tuple(name for name, _ in axes)
        self.sizes = tuple(int(size) for _, size in axes)
        self.chip_ids = np.arange(math.prod(self.sizes)).reshape(self.sizes)

    @property
    def num_chips(self) -> int:
        return int(self.chip_ids.size)

    def hops(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Hops from chip a to chip b (elementwise)."""
        node = int(self.hw["chips_per_node"])
        rack = node * int(self.hw["nodes_per_rack"])
        return np.where(a == b, 0, np.where(a // node == b // node, 1,
                                            np.where(a // rack == b // rack,
                                                     int(self.hw["rack_hops"]),
                                                     int(self.hw["max_hops"]))))

    def _groups(self, axis_names: tuple[str, ...]) -> np.ndarray:
        """[groups, g]: the chips of each group a collective over these axes spans."""
        unknown = [n for n in axis_names if n not in self.names]
        if unknown:
            raise ValueError(f"collective over axis {unknown[0]!r}, which the deployment lacks "
                             f"(axes: {', '.join(self.names) or 'none'})")
        moved = [self.names.index(n) for n in axis_names]
        rest = [i for i in range(len(self.names)) if i not in moved]
        g = math.prod(self.sizes[i] for i in moved)
        return np.transpose(self.chip_ids, rest + moved).reshape(-1, g)

    def group_size(self, axis_names: tuple[str, ...]) -> int:
        return self._groups(axis_names).shape[1]

    def _phase_cycles(self, hops: int, per_link_bytes: float) -> float:
        vector = self.hw["c2c_vector"]
        wire_bytes = math.ceil(per_link_bytes / vector) * vector
        payload_rate = self.hw["c2c_link_bandwidth"] * (1 - self.hw["c2c_framing_overhead"])
        seconds = wire_bytes / payload_rate
        return hops * self.hw["c2c_hop_latency"] + seconds * self.hw["clock"]

    def collective(self, kind: str, axis_names: tuple[str, ...], nbytes: int,
                   perm: tuple[tuple[int, int], ...] = ()) -> tuple[int, int, int]:
        """(cycles, bytes each chip sends over all its hops, hops) of one collective."""
        groups = self._groups(axis_names)
        g = groups.shape[1]
        if g == 1 or nbytes == 0:
            return 0, 0, 0
        if kind == "ppermute":
            if not perm:
                return 0, 0, 0
            src, dst = np.array(perm).T
            hops = int(self.hops(groups[:, src], groups[:, dst]).max())
            return math.ceil(self._phase_cycles(hops, nbytes)), nbytes * hops, hops
        node = int(self.hw["chips_per_node"])
        within_node = bool(np.all(groups // node == groups[:, :1] // node))
        hops = int(max(self.hops(groups[:, :1], groups).max(), 1))
        links = g - 1 if within_node else min(g - 1, int(self.hw["c2c_global_links"]))
        rounds = math.ceil((g - 1) / links)  # each link carries this many peers' shares
        if kind in ALL_REDUCE:
            one_phase = self._phase_cycles(hops, rounds * nbytes)
            two_phases = 2 * self._phase_cycles(hops, rounds * nbytes / g)
            cycles = min(one_phase, two_phases)
            sent = (g - 1) * nbytes if one_phase <= two_phases else 2 * (g - 1) * nbytes / g
        elif kind in GATHERING:
            cycles, sent = self._phase_cycles(hops, rounds * nbytes), (g - 1) * nbytes
        elif kind in SCATTERING:
            cycles, sent = self._phase_cycles(hops, rounds * nbytes / g), (g - 1) * nbytes / g
        else:
            raise ValueError(f"no cost for collective {kind!r}")
        return math.ceil(cycles), int(sent * hops), hops
