"""Several named peft LoRA adapters on one model: which are active, which train, their weights.

Methods that keep more than one adapter (``o-lora``: one per task, ``mage``: four experts,
``lwf`` / ``quad``: a frozen teacher copy, ``mr-lora``: an expert per task and a router) share
this bookkeeping; what the adapters mean stays in the method. See docs/methods.md.

peft details these helpers account for: ``LoraModel.set_adapter([...])`` activates the listed
adapters AND sets ``requires_grad=True`` on all of them (``add_adapter`` also re-enables the
grads of the active ones), so freezing must come after activating.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from peft.tuners.lora import LoraLayer


def lora_layers(model: torch.nn.Module, adapter: str | None = None) -> list[tuple[str, LoraLayer]]:
    """``(name, layer)`` of every peft LoRA layer of ``model`` (holding ``adapter``, if given), in model order."""
    return [
        (n, m) for n, m in model.named_modules()
        if isinstance(m, LoraLayer) and (adapter is None or adapter in m.lora_A)
    ]


def activate(model: torch.nn.Module, adapters: Sequence[str], trainable: Sequence[str]) -> None:
    """Make every adapter of ``adapters`` active (their updates summed in the forward) and only
    those in ``trainable`` require grad. ``model`` is a ``PeftModel``."""
    base = model.base_model
    base.set_adapter(list(adapters))  # also sets requires_grad=True on every one of them
    frozen = [a for a in adapters if a not in trainable]
    if frozen:
        base.set_requires_grad(frozen, requires_grad=False)


def adapter_weights(
    layers: Iterable[tuple[str, LoraLayer]], adapters: Iterable[str]
) -> dict[str, torch.nn.Parameter]:
    """``{"<layer>.lora_A.<adapter>": A, "<layer>.lora_B.<adapter>": B, ...}``, adapter by adapter, layer by layer."""
    layers = list(layers)
    out: dict[str, torch.nn.Parameter] = {}
    for a in adapters:
        for n, layer in layers:
            if a in layer.lora_A:
                out[f"{n}.lora_A.{a}"] = layer.lora_A[a].weight
                out[f"{n}.lora_B.{a}"] = layer.lora_B[a].weight
    return out


def adapter_parameters(model: torch.nn.Module, adapter: str) -> list[tuple[str, torch.nn.Parameter]]:
    """Every parameter of ``adapter`` (LoRA matrices and ``modules_to_save`` copies), by full name."""
    pattern = re.compile(rf"\.{re.escape(adapter)}(\.|$)")
    return [(n, p) for n, p in model.named_parameters() if pattern.search(n)]


@contextmanager
def adapter_in_use(model: torch.nn.Module, adapter: str) -> Iterator[None]:
    """``adapter`` alone active inside the block (e.g. to read image features through the expert a
    sample was routed to), then the adapters active before and every ``requires_grad`` flag restored.
    ``model`` is a ``PeftModel``; an unknown adapter is a ValueError naming the ones there are."""
    names = list(getattr(model, "peft_config", {}) or {})
    if adapter not in names:
        raise ValueError(f"adapter {adapter!r} is not on the model (adapters: {', '.join(names) or 'none'})")
    before = list(model.base_model.active_adapters)
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.base_model.set_adapter(adapter)
    try:
        yield
    finally:
        model.base_model.set_adapter(before if len(before) > 1 else before[0])
        for p, g in grads:
            p.requires_grad_(g)
