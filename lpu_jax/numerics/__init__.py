"""TruePoint-style numerics: storage formats, matmuls with an accumulation policy, and precision
recipes that choose both per tensor class."""
