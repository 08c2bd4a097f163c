"""Prompts made from text: code cut before a function's `def`, a message in a chat template."""

from __future__ import annotations

from .errors import UserError


def code_before_def(tokenizer, lines: list[str], i: int, max_tokens: int) -> str | None:
    """Line i (a `def`) and as many whole lines before it as fit in max_tokens, or None."""
    start = i
    while start > 0 and len(tokenizer.encode("".join(lines[start - 1 : i + 1]))) <= max_tokens:
        start -= 1
    text = "".join(lines[start : i + 1])
    return text if len(tokenizer.encode(text)) <= max_tokens else None


def chat_prompt(tokenizer, message: str) -> str:
    """The user message in the tokenizer's chat template, ready for the assistant's reply."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise UserError(
            "chat prompts need a tokenizer with a chat template (an imported model's gguf or "
            "hf-json tokenizer): this spec's tokenizer has none"
        )
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    messages = [{"role": "user", "content": message}]
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)
