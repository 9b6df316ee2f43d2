"""The LPU side of the emulator: hardware descriptions (and, built on them, the cycle model)."""
