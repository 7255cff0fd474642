"""Frozen image features computed once per run (``train.feature_cache``).

When nothing on the vision side of a LLaVA-class model trains (lora-ft, replay, ewc, lwf, quad,
o-lora, moelora, mr-lora without projector copies...), every image's image-token embeddings (the
projector's output) are the same in every epoch and in all T+1 evaluations. This cache keeps
them per image for the run, in memory up to ``train.feature_cache_mb`` and on disk (inside the run
directory) past it, and hands them back instead of running the vision tower and projector again.

**How it plugs in.** The model's inner ``LlavaModel`` gets a per-instance subclass whose
``get_image_features`` looks each image up first. transformers 5.x routes every use of the
vision side through that one method: ``LlavaModel.forward`` (training, LwF/QUAD teachers) and
``generate`` (which encodes the images once before prefill and passes ``mm_encoder_outputs``),
both read only its ``pooler_output`` (one ``[tokens, hidden]`` tensor per image). A subclass rather
than an instance attribute, so that a deep copy of the model (a teacher) runs on its own weights.

**Why a hit is never stale** (checked at *every* call, not once per run):

1. *Nothing on the vision side can change its output.* The vision side is every child of the
   inner model except ``language_model`` (vision tower and projector). A call is served from the
   cache only when: no parameter there requires grad; no forward (pre-)hook is registered on any
   of its modules, nor a global module hook; every module there is a plain ``torch.nn`` or
   ``transformers`` class (a peft LoRA layer, ``ModulesToSaveWrapper`` — mr-lora's projector
   copies —, UNIFIER's branches or any other wrapper makes the call bypass the cache, even while
   an adapter is disabled); in training mode, no dropout with p > 0 is active there; the pixels do
   not require grad; the call passes no option beyond the standard ones. Otherwise the call runs
   the original code and the reason is counted in ``bypassed``.
2. *The weights are the ones the entries were computed with.* Entries are keyed by a content
   fingerprint of the vision side (BLAKE2b over every parameter's and buffer's bytes). It is
   recomputed whenever the cheap version signature (each tensor's identity, storage pointer and
   in-place version counter, which every optimizer step, ``copy_`` or ``load_state_dict`` bumps)
   changes, and at every stage (:meth:`FeatureCache.begin_stage`); a new fingerprint drops every
   entry (``invalidations``).
3. *The key is the image itself.* BLAKE2b of the image's pixel bytes, with its shape and dtype,
   the call's options (and the config's feature layer and selection strategy they default to), the
   device and the autocast state.

Float note: a cached feature was computed in whatever batch first held its image; the vision
tower's rows do not depend on their batch-mates mathematically, but a CPU or GPU kernel may round
differently for a different batch size. tests/test_feature_cache.py checks that the matrices of a
quick run are identical with and without the cache on this code path.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from mmcl.models.dual import base_model

SUPPORTED_MODEL_TYPES = ("llava",)
"""Model types whose ``get_image_features`` returns one ``[tokens, hidden]`` feature per image."""

STANDARD_KWARGS = {"return_dict", "vision_feature_layer", "vision_feature_select_strategy"}
_SAFE_CLASS_PREFIXES = ("torch.nn.", "transformers.")
_DROPOUT_ATTRS = ("dropout", "attention_dropout", "dropout_rate", "hidden_dropout", "attn_dropout")

Mode = Literal["auto", "on", "off"]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bypassed: Counter = field(default_factory=Counter)  # reason -> calls
    invalidations: int = 0
    spilled: int = 0  # entries written to disk
    stage_fingerprints: list[str] = field(default_factory=list)


def inner_model(model: Any) -> Any | None:
    """The ``LlavaModel`` under a ``LlavaForConditionalGeneration`` (peft-wrapped or not), or None."""
    inner = getattr(base_model(model), "model", None)
    return inner if inner is not None and hasattr(inner, "get_image_features") else None


def vision_modules(inner: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The vision side: every child of the inner model except the language model."""
    return [(n, m) for n, m in inner.named_children() if n != "language_model"]


def unsafe_reason(inner: torch.nn.Module) -> str | None:
    """Why the vision side's output could differ from a cached one now (None: it cannot)."""
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return "global module hooks"
    for root, mod in vision_modules(inner):
        for name, m in mod.named_modules(prefix=root):
            cls = type(m)
            if not cls.__module__.startswith(_SAFE_CLASS_PREFIXES):
                return f"{name} is a {cls.__name__} (adapter or branch on the vision side)"
            if m._forward_pre_hooks or any(not _observes_only(h) for h in m._forward_hooks.values()):
                return f"forward hooks on {name}"
            if m.training:
                if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
                    return f"dropout in {name}"
                if any(isinstance(getattr(m, a, None), float) and getattr(m, a) > 0 for a in _DROPOUT_ATTRS):
                    return f"dropout in {name}"
            for pname, p in m.named_parameters(recurse=False):
                if p.requires_grad:
                    return f"{name}.{pname} requires grad"
    return None


def _observes_only(hook: Any) -> bool:
    """transformers' own output-capturing hooks (installed on first use to collect hidden states; they return None)."""
    return getattr(hook, "__module__", "") == "transformers.utils.output_capturing" and getattr(
        hook, "__qualname__", "").endswith("output_capturing_hook")


def _tensors(inner: torch.nn.Module) -> list[torch.Tensor]:
    out = []
    for _, mod in vision_modules(inner):
        out += [p for p in mod.parameters()] + [b for b in mod.buffers()]
    return out


def version_signature(inner: torch.nn.Module) -> tuple:
    """Cheap: changes whenever a vision-side tensor is replaced or modified in place."""
    return tuple((id(t), t.data_ptr(), t._version) for t in _tensors(inner))


def weights_fingerprint(inner: torch.nn.Module) -> str:
    """BLAKE2b over the bytes of every vision-side parameter and buffer (in module order)."""
    h = hashlib.blake2b(digest_size=16)
    for t in _tensors(inner):
        t = t.detach().to("cpu").contiguous()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _image_key(pixels: torch.Tensor) -> str:
    t = pixels.detach().contiguous()
    h = hashlib.blake2b(digest_size=20)
    h.update(str((tuple(t.shape), t.dtype)).encode())
    h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """Per-image projector outputs of one run (see the module docstring)."""

    def __init__(self, limit_mb: float = 2048.0, spill_dir: str | Path | None = None) -> None:
        self.limit_bytes = int(limit_mb * 2**20)
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.entries: dict[str, torch.Tensor | Path] = {}
        self.memory_bytes = 0
        self.stats = CacheStats()
        self._fingerprint: str | None = None
        self._signatures: dict[int, tuple[tuple, str]] = {}  # id(inner) -> (version signature, fingerprint)
        self._installed: list[tuple[torch.nn.Module, type]] = []

    # ------------------------------------------------------------ install
    def install(self, model: Any) -> str | None:
        """Route ``model``'s image features through the cache; returns why not (None: installed)."""
        inner = inner_model(model)
        if inner is None:
            return "the model has no get_image_features"
        model_type = getattr(base_model(model).config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            return f"model type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        if getattr(type(inner), "_mmcl_feature_cache", None) is not None:
            type(inner)._mmcl_feature_cache = self
            return None
        original = type(inner)
        cache = self

        @functools.wraps(original.get_image_features)  # generate() reads its signature
        def get_image_features(self_: Any, pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            return type(self_)._mmcl_feature_cache.features(self_, original, pixel_values, args, kwargs)

        inner.__class__ = type(f"FeatureCached{original.__name__}", (original,),
                               {"get_image_features": get_image_features, "_mmcl_feature_cache": cache,
                                "__module__": original.__module__})
        self._installed.append((inner, original))
        return None

    def uninstall(self) -> None:
        for inner, original in self._installed:
            inner.__class__ = original
        self._installed = []

    def close(self) -> None:
        """Uninstall, forget every entry and remove the spill directory."""
        self.uninstall()
        self.entries.clear()
        self.memory_bytes = 0
        if self.spill_dir is not None and self.spill_dir.exists():
            shutil.rmtree(self.spill_dir, ignore_errors=True)

    # ------------------------------------------------------------ validity
    def begin_stage(self, model: Any) -> None:
        """Recompute the vision side's fingerprint now (a stage starts) and record it."""
        inner = inner_model(model)
        if inner is None:
            return
        self._signatures.pop(id(inner), None)
        self.stats.stage_fingerprints.append(self._current_fingerprint(inner))

    def _current_fingerprint(self, inner: torch.nn.Module) -> str:
        sig = version_signature(inner)
        known = self._signatures.get(id(inner))
        if known is not None and known[0] == sig:
            fp = known[1]
        else:
            fp = weights_fingerprint(inner)
            self._signatures[id(inner)] = (sig, fp)
        if fp != self._fingerprint:
            if self._fingerprint is not None and self.entries:
                self.stats.invalidations += 1
            self._clear()
            self._fingerprint = fp
        return fp

    def _clear(self) -> None:
        for v in self.entries.values():
            if isinstance(v, Path):
                v.unlink(missing_ok=True)
        self.entries.clear()
        self.memory_bytes = 0

    # ------------------------------------------------------------ lookup
    @torch.compiler.disable  # always eager: its checks run at every call, also inside a compiled forward
    def features(self, inner: Any, original: type, pixel_values: torch.Tensor, args: tuple, kwargs: dict) -> Any:
        """``get_image_features``, from the cache where provably safe."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        def run_original(pixels: torch.Tensor) -> Any:
            return original.get_image_features(inner, pixels, *args, **kwargs)

        reason = self._bypass_reason(inner, pixel_values, args, kwargs)
        if reason is not None:
            self.stats.bypassed[reason] += 1
            return run_original(pixel_values)
        fp = self._current_fingerprint(inner)
        config = getattr(inner, "config", None)  # the defaults get_image_features fills in from the config
        options = repr((sorted(kwargs.items()), getattr(config, "vision_feature_layer", None),
                        getattr(config, "vision_feature_select_strategy", None),
                        torch.is_autocast_enabled(pixel_values.device.type), str(pixel_values.device), fp))
        cpu_pixels = pixel_values.detach().to("cpu")
        keys = [_image_key(cpu_pixels[i]) + options for i in range(len(cpu_pixels))]
        found = [self._get(k, pixel_values.device) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            out = run_original(pixel_values if len(missing) == len(keys) else pixel_values[missing])
            feats = list(out.pooler_output)
            if len(feats) != len(missing):
                self.stats.bypassed[f"{len(feats)} features for {len(missing)} images"] += 1
                return out if len(missing) == len(keys) else run_original(pixel_values)
            for i, f in zip(missing, feats, strict=True):
                f = f.detach().clone()
                found[i] = f
                self._put(keys[i], f)
        self.stats.hits += len(keys) - len(missing)
        self.stats.misses += len(missing)
        return BaseModelOutputWithPooling(pooler_output=found)

    def _bypass_reason(self, inner: Any, pixel_values: Any, args: tuple, kwargs: dict) -> str | None:
        if kwargs.get("image_sizes") is None:
            kwargs.pop("image_sizes", None)
        if args or set(kwargs) - STANDARD_KWARGS:
            return "non-standard arguments"
        if kwargs.get("return_dict") is False:
            return "return_dict=False"
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            return "pixel_values is not [images, C, H, W]"
        if pixel_values.requires_grad:
            return "pixel_values requires grad"
        return unsafe_reason(inner)

    def _get(self, key: str, device: torch.device) -> torch.Tensor | None:
        v = self.entries.get(key)
        if isinstance(v, Path):
            return torch.load(v, map_location=device, weights_only=True)
        return v

    def _put(self, key: str, f: torch.Tensor) -> None:
        size = f.numel() * f.element_size()
        if self.memory_bytes + size <= self.limit_bytes or self.spill_dir is None:
            if self.memory_bytes + size > self.limit_bytes:
                return  # over the limit and nowhere to spill: not kept
            self.entries[key] = f
            self.memory_bytes += size
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"{hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}.pt"
        torch.save(f.to("cpu"), path)
        self.entries[key] = path
        self.stats.spilled += 1

    # ------------------------------------------------------------ report
    def summary(self) -> dict[str, Any]:
        """What ``results.json`` keeps under ``cost.feature_cache``."""
        s = self.stats
        return {
            "hits": s.hits,
            "misses": s.misses,
            "bypassed": dict(s.bypassed),
            "invalidations": s.invalidations,
            "entries": len(self.entries),
            "memory_bytes": self.memory_bytes,
            "spilled": s.spilled,
            "stage_fingerprints": s.stage_fingerprints,
        }


def attach(mode: Mode, model: Any, limit_mb: float, spill_dir: str | Path | None) -> tuple[FeatureCache | None, str]:
    """The run's cache for ``train.feature_cache`` = ``mode``; returns (cache or None, what was decided).

    ``auto`` installs it where the model supports it (each call is still checked, see above);
    ``on`` does the same but refuses a model that cannot use it; ``off`` never installs it.
    """
    if mode == "off":
        return None, "off"
    cache = FeatureCache(limit_mb, spill_dir)
    why_not = cache.install(model)
    if why_not is None:
        return cache, "on"
    if mode == "on":
        raise ValueError(f"train.feature_cache=on: {why_not}; use auto or off")
    return None, f"off ({why_not})"
