"""Backend registries: the model asks for "attention" or "moe" and gets the implementation registered
for the device, so the model file never branches on the device."""

from __future__ import annotations

from typing import Callable

import torch

_REGISTRIES: dict[str, dict[str, Callable]] = {"attention": {}, "moe": {}}


def register(kind: str, device_type: str):
    """Decorator: register a backend factory for one device type ("cpu", "cuda")."""

    def wrap(factory: Callable) -> Callable:
        _REGISTRIES[kind][device_type] = factory
        return factory

    return wrap


def create(kind: str, device: torch.device, **kwargs):
    table = _REGISTRIES[kind]
    factory = table.get(device.type) or table.get("cpu")  # the reference path runs anywhere torch runs
    if factory is None:
        raise KeyError(f"no {kind} backend registered for {device.type}")
    return factory(**kwargs)
