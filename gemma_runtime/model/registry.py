"""Backend registries: the model asks for "attention", "moe", "norm", "kv_write" (the q/k/v step that writes
the KV cache), "geglu" or "linear" and gets the implementation registered for the device, so neither the
model file nor a backend branches on the device."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

_REGISTRIES: dict[str, dict[str, Callable]] = {
    kind: {} for kind in ("attention", "moe", "norm", "kv_write", "geglu", "linear")
}


def register(kind: str, device_type: str):
    """Decorator: register a backend factory for one device type ("cpu", "cuda")."""

    def wrap(factory: Callable) -> Callable:
        _REGISTRIES[kind][device_type] = factory
        return factory

    return wrap


# Backends that need more than torch (Triton kernels) register themselves when first asked for.
_LAZY_MODULES = {"cuda": "gemma_runtime.model.cuda_backends"}


def create(kind: str, device: torch.device, **kwargs):
    if device.type in _LAZY_MODULES:
        importlib.import_module(_LAZY_MODULES[device.type])
    table = _REGISTRIES[kind]
    factory = table.get(device.type) or table.get("cpu")  # the reference path runs anywhere torch runs
    if factory is None:
        raise KeyError(f"no {kind} backend registered for {device.type}")
    return factory(**kwargs)
