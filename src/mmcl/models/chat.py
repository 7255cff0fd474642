"""Prompt building through the processor's chat template (LLaVA-1.5 style for the tiny model)."""

from __future__ import annotations

from typing import Any

from mmcl.data.sample import Sample

IGNORE_INDEX = -100
"""The label of a position the loss ignores (transformers' convention): training encodes the prompt with it."""

# LLaVA-1.5 ("vicuna_v1"-like) conversation format, written as a Jinja chat template so
# that real checkpoints with their own template go through exactly the same code.
LLAVA15_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT:"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for c in message['content'] %} {{ c['text'] }}{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Qwen2-VL / Qwen2.5-VL ChatML format (without the default system turn), for checkpoints whose
# processor has no template of its own.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Janus(-Pro) understanding format: "<|User|>: <image_placeholder>\nQ\n\n<|Assistant|>: A<eos>".
JANUS_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|User|>: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image_placeholder>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}<|Assistant|>:"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for c in message['content'] %} {{ c['text'] }}{% endfor %}{% endif %}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)


def conversation(sample: Sample, with_image: bool) -> list[dict[str, Any]]:
    """The sample as chat messages (history turns first; the image goes in the first user turn)."""
    turns = [*sample.history, (sample.question, None)]
    messages: list[dict[str, Any]] = []
    for i, (q, a) in enumerate(turns):
        content: list[dict[str, Any]] = []
        if i == 0 and with_image:
            content.append({"type": "image"})
        content.append({"type": "text", "text": q})
        messages.append({"role": "user", "content": content})
        if a is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
    return messages


def build_prompt(processor: Any, sample: Sample, with_image: bool) -> str:
    """Prompt text ending with the assistant's generation prefix."""
    msgs = conversation(sample, with_image)
    template = getattr(processor, "chat_template", None) or LLAVA15_CHAT_TEMPLATE
    return processor.apply_chat_template(
        msgs, chat_template=template, tokenize=False, add_generation_prompt=True
    )


def answer_text(answer: str, prompt: str = "") -> str:
    """Target text appended after the generation prefix ``prompt``: a leading space, as in the
    LLaVA and Janus templates, unless the prefix already ends with whitespace (Qwen's newline)."""
    sep = "" if prompt[-1:].isspace() else " "
    return sep + answer.strip()
