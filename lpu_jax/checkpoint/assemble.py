"""Turn a checkpoint's named tensors into the Params pytree, one parameter at a time.

The safetensors and the GGUF loaders both go through here, each with its own naming
(lpu_jax/parameters.py declares every tensor's names), so the mapping, the shape checks and the
streaming onto the device are written once. Shapes are checked in the checkpoint's [out, in]
layout; matrices are then transposed to the model's [in, out].
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import numpy as np

from lpu_jax.config import ModelConfig
from lpu_jax.errors import UserError
from lpu_jax.model import LayerParams, Params
from lpu_jax.parameters import (EMBED, FINAL_NORM, LM_HEAD, MODEL_TENSORS, Tensor,
                                checkpoint_names, layer_tensors)

# Reads one checkpoint tensor by name, given the parameter it is (part of).
Reader = Callable[[str, Tensor], np.ndarray]


def _parameters(cfg: ModelConfig):
    """(layer or None, tensor) for every parameter of the model."""
    for tensor in MODEL_TENSORS:
        if tensor.present(cfg):
            yield None, tensor
    for i in range(cfg.num_layers):
        for tensor in layer_tensors(cfg):
            yield i, tensor


def required_tensors(cfg: ModelConfig, naming: str = "hf") -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor name the model needs under a naming, with its shape."""
    return {name: tensor.checkpoint_shape(cfg, naming) for layer, tensor in _parameters(cfg)
            for name in checkpoint_names(tensor, layer, cfg, naming)}


def build_params(cfg: ModelConfig, available: Iterable[str], read: Reader, source: str,
                 naming: str = "hf", dtype=np.float32,
                 device: jax.Device | None = None) -> Params:
    """Read each needed tensor, check its shape, convert it and put it on the device, one by one.

    Only one parameter is held on the host at a time, so loading peaks near the size of the
    result.
    """
    needed = required_tensors(cfg, naming)
    available = set(available)
    missing = [name for name in needed if name not in available]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{source}: checkpoint lacks tensor {missing[0]!r}{more}; "
                        f"is it complete and a {cfg.model_type}-architecture model?")
    device = device or jax.local_devices()[0]  # this process's own, also under jax.distributed

    def read_checked(name: str, tensor: Tensor) -> np.ndarray:
        array = read(name, tensor)
        if tuple(array.shape) != needed[name]:
            raise UserError(f"{source}: tensor {name!r} has shape {tuple(array.shape)}, the config "
                            f"needs {needed[name]}; the config and the weights do not match")
        return np.asarray(array, dtype=dtype)

    def load(tensor: Tensor, layer: int | None = None) -> jax.Array | None:
        if not tensor.present(cfg):
            return None
        names = checkpoint_names(tensor, layer, cfg, naming)
        if len(names) == 1:
            array = read_checked(names[0], tensor)
            if array.ndim >= 2:  # [.., out, in] -> [.., in, out]
                array = np.ascontiguousarray(np.swapaxes(array, -1, -2))
            return jax.device_put(array, device)
        # A tensor per expert, each put in its place transposed: one expert read at a time.
        array = np.empty(tensor.shape(cfg), dtype)
        for e, name in enumerate(names):
            array[e] = read_checked(name, tensor).T
        return jax.device_put(array, device)

    layers = tuple(LayerParams(**{t.field: load(t, i) for t in layer_tensors(cfg)})
                   for i in range(cfg.num_layers))
    return Params(embed_DV=load(EMBED), layers=layers, final_norm_D=load(FINAL_NORM),
                  lm_head_DV=load(LM_HEAD))


def abstract_params(cfg: ModelConfig) -> Params:
    """The parameters' shapes and dtypes (f32, [in, out]) with no values: for estimates of models
    too big to load."""
    def spec(tensor: Tensor):
        return (jax.ShapeDtypeStruct(tensor.shape(cfg), np.float32) if tensor.present(cfg)
                else None)

    layer = LayerParams(**{t.field: spec(t) for t in layer_tensors(cfg)})
    return Params(embed_DV=spec(EMBED), layers=(layer,) * cfg.num_layers,
                  final_norm_D=spec(FINAL_NORM), lm_head_DV=spec(LM_HEAD))
