"""Model families: what mmcl needs to know to load, prompt and adapt each kind of MLLM.

A family is found from a checkpoint's ``config.json`` (``model_type``, else ``architectures``).
Its regexes name modules of the *loaded* transformers class (transformers 5.x layout, where the
language model sits at ``model.language_model``); peft matches them with ``re.fullmatch``.

| family       | class                                   | vision encoder blocks               | projector                   |
|--------------|-----------------------------------------|-------------------------------------|-----------------------------|
| llava        | LlavaForConditionalGeneration           | model.vision_tower.encoder.layers   | model.multi_modal_projector |
| llava-next   | LlavaNextForConditionalGeneration       | model.vision_tower.encoder.layers   | model.multi_modal_projector |
| qwen2-vl     | Qwen2VLForConditionalGeneration         | model.visual.blocks                 | model.visual.merger         |
| qwen2.5-vl   | Qwen2_5_VLForConditionalGeneration      | model.visual.blocks                 | model.visual.merger         |
| janus        | JanusForConditionalGeneration           | model.vision_model.encoder.layers   | model.aligner               |

Vision inputs differ per family (see ``train/encode.py``): LLaVA ``pixel_values`` [B, C, H, W];
LLaVA-NeXT [B, patches, C, H, W] + ``image_sizes`` (anyres tiles); Qwen2-VL packed patches
[sum_patches, dim] + ``image_grid_thw`` (and ``mm_token_type_ids`` for M-RoPE); Janus [B, C, H, W].
A Janus checkpoint also answers with images, whether it is the tiny preset or a local directory
(``model.path``): training on image targets (``train/dual.py``) and generation (``eval/dual.py``)
read only the real class's modules (VQ, generation head and embeddings) and the processor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mmcl.models.chat import JANUS_CHAT_TEMPLATE, LLAVA15_CHAT_TEMPLATE, QWEN_CHAT_TEMPLATE

# The language model's attention and MLP linear layers: the same names in every family.
LM_LORA_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
CLIP_VISION_LORA_TARGETS = r".*vision_tower\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc\d)"


@dataclass(frozen=True)
class Family:
    """What mmcl needs to know about a model family."""

    name: str
    model_class: str  # transformers class name
    lora_targets: str  # regex over module names: the language model's linear layers
    vision_lora_targets: str  # regex over module names: the vision encoder's linear layers
    vision_blocks: str  # attribute path of the vision encoder's block list
    projector: str  # attribute path of the vision->language projector
    model_types: tuple[str, ...] = ()  # config.json model_type values of this family
    processor_class: str = ""  # transformers processor class (used when AutoProcessor cannot build it)
    chat_template: str = LLAVA15_CHAT_TEMPLATE  # used when the checkpoint's processor has none

    @property
    def architectures(self) -> tuple[str, ...]:
        return (self.model_class,)


FAMILIES: dict[str, Family] = {
    "llava": Family(
        name="llava",
        model_class="LlavaForConditionalGeneration",
        lora_targets=LM_LORA_TARGETS,
        vision_lora_targets=CLIP_VISION_LORA_TARGETS,
        vision_blocks="model.vision_tower.encoder.layers",
        projector="model.multi_modal_projector",
        model_types=("llava",),
        processor_class="LlavaProcessor",
    ),
    "llava-next": Family(
        name="llava-next",
        model_class="LlavaNextForConditionalGeneration",
        lora_targets=LM_LORA_TARGETS,
        vision_lora_targets=CLIP_VISION_LORA_TARGETS,
        vision_blocks="model.vision_tower.encoder.layers",
        projector="model.multi_modal_projector",
        model_types=("llava_next",),
        processor_class="LlavaNextProcessor",
    ),
    "qwen2-vl": Family(
        name="qwen2-vl",
        model_class="Qwen2VLForConditionalGeneration",
        lora_targets=LM_LORA_TARGETS,
        vision_lora_targets=r".*visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc\d)",
        vision_blocks="model.visual.blocks",
        projector="model.visual.merger",
        model_types=("qwen2_vl",),
        processor_class="Qwen2VLProcessor",
        chat_template=QWEN_CHAT_TEMPLATE,
    ),
    "qwen2.5-vl": Family(
        name="qwen2.5-vl",
        model_class="Qwen2_5_VLForConditionalGeneration",
        lora_targets=LM_LORA_TARGETS,
        vision_lora_targets=r".*visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate|up|down)_proj)",
        vision_blocks="model.visual.blocks",
        projector="model.visual.merger",
        model_types=("qwen2_5_vl",),
        processor_class="Qwen2_5_VLProcessor",
        chat_template=QWEN_CHAT_TEMPLATE,
    ),
    "janus": Family(
        name="janus",
        model_class="JanusForConditionalGeneration",
        lora_targets=LM_LORA_TARGETS,
        vision_lora_targets=r".*vision_model\.encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|projection_layer)|mlp\.fc\d)",
        vision_blocks="model.vision_model.encoder.layers",
        projector="model.aligner",
        model_types=("janus",),
        processor_class="JanusProcessor",
        chat_template=JANUS_CHAT_TEMPLATE,
    ),
}


class UnsupportedFamilyError(ValueError):
    """The checkpoint's config names a model type mmcl has no family for."""


def detect_family(config: dict) -> Family:
    """The family of a checkpoint from its config.json contents: ``model_type``, else ``architectures``."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    for fam in FAMILIES.values():
        if any(a in fam.architectures for a in architectures):
            return fam
    supported = ", ".join(f"{f.name} ({f.model_class})" for f in FAMILIES.values())
    raise UnsupportedFamilyError(
        f"model_type {model_type!r} (architectures {architectures}) is not supported; supported families: {supported}"
    )


def read_config(path: Path) -> dict:
    """config.json of a checkpoint directory (raises OSError / ValueError)."""
    return json.loads((path / "config.json").read_text())
