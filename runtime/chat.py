"""Chat templates: a conversation rendered as transformers' `apply_chat_template` renders it,
and a conversation as training tokens whose loss counts only the assistant's replies.

Rendering. The template is the tokenizer's `chat_template` (an imported gguf / hf-json
tokenizer's; `runtime.weights.tokenizer`), a Jinja template run in a sandbox with what
transformers gives it: `messages`, `add_generation_prompt`, `bos_token` / `eos_token` (the
tokenizer's BOS / EOS token text, left undefined when it has none), `tools` and `documents`
(None), `raise_exception(message)`, `strftime_now(format)`, its `tojson` filter (no HTML
escaping), loop controls, and the `{% generation %}` tag (rendered as its body). The byte and
locally trained BPE tokenizers have no template: chat data and chat prompts are refused for
them (no fallback template is guessed, since a model answers in the format it was trained on).

Which tokens are the assistant's comes from the rendering itself, never from guessing: the
conversation is rendered prefix by prefix. For assistant message k, `render(messages[:k],
add_generation_prompt=True)` (the prompt the model would be given, its assistant header
included) and `render(messages[:k + 1])` (the conversation with the reply) must both be
prefixes of the whole rendering; the text between them is the reply as the model writes it:
the message's content and whatever the template closes a turn with (`<|im_end|>`, an EOS).
Everything else (system and user turns, the assistant headers) is context. A template whose
renderings are not prefixes of each other (one that rewrites earlier turns) is refused with
that reason.

Tokens. Each piece is tokenized on its own and the pieces concatenated: a reply then starts on
a token boundary exactly where the prompt the model is given at inference time ends, and the
flag of every token (`compiler.loss_mask`: context tokens get NO_LOSS) is exact, never split
across a boundary. Decoding the ids gives back the rendered text.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime

import numpy as np

from compiler.loss_mask import no_loss

from .errors import UserError

NO_TEMPLATE_HINT = (
    "use the model's own tokenizer, which carries its chat template (tokenizer.kind: gguf, or "
    "hf-json with a tokenizer_config.json holding `chat_template` beside the tokenizer.json)"
)


class ChatError(ValueError):
    """A conversation this template cannot render, or one that is not a list of messages;
    callers add where it came from (a file and line)."""


def template_of(tokenizer) -> str | None:
    return getattr(tokenizer, "chat_template", None) or None


def require_template(tokenizer, what: str = "chat prompts") -> str:
    template = template_of(tokenizer)
    if not template:
        name = getattr(tokenizer, "name", type(tokenizer).__name__)
        raise UserError(
            f"{what} need a tokenizer with a chat template (an imported model's gguf or "
            f"hf-json tokenizer): this spec's tokenizer ({name}) has none",
            hint=NO_TEMPLATE_HINT,
        )
    return template


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask tag): the
        body, rendered as it is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatError(f"the tokenizer's chat template does not parse ({e.message})") from None


def _token_text(tokenizer, token_id: int) -> str | None:
    backend = getattr(tokenizer, "backend", None)
    if token_id is None or token_id < 0 or backend is None:
        return None
    return backend.id_to_token(int(token_id))


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation in the tokenizer's chat template (UserError without one, ChatError
    when the template raises)."""
    import jinja2

    template = _compiled(require_template(tokenizer))
    specials = {}
    for name, token_id in (("bos_token", "bos_id"), ("eos_token", "eos_id")):
        text = _token_text(tokenizer, getattr(tokenizer, token_id, -1))
        if text is not None:
            specials[name] = text
    try:
        return template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            tools=None,
            documents=None,
            **specials,
        )
    except jinja2.exceptions.TemplateError as e:
        raise ChatError(f"the chat template refused the conversation: {e.message or e}") from None
    except (TypeError, KeyError, IndexError, AttributeError, ValueError) as e:
        raise ChatError(f"the chat template failed on the conversation ({e})") from None


def check_messages(messages, where: str = "messages") -> list[dict]:
    """A list of {role, content} dicts (strings), or a ChatError naming the bad entry."""
    if not isinstance(messages, list) or not messages:
        raise ChatError(f"{where} must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatError(f"{where}[{i}] is a {json_kind(m)}, not a {{role, content}} object")
        for key in ("role", "content"):
            if key not in m:
                raise ChatError(f'{where}[{i}] has no "{key}"')
            if not isinstance(m[key], str):
                raise ChatError(f"{where}[{i}].{key} is a {json_kind(m[key])}, not a string")
            if not valid_text(m[key]):
                raise ChatError(f"{where}[{i}].{key} is not valid Unicode (a lone surrogate)")
    return messages


def valid_text(text: str) -> bool:
    """False for a string that JSON's \\uXXXX escapes made unencodable (a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_kind(value) -> str:
    """What a JSON value is, in JSON's words."""
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def pieces(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is an assistant reply) pieces, in order;
    their texts joined are `render(tokenizer, messages)` (module docstring)."""
    whole = render(tokenizer, messages)
    out, done = [], 0
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:k], add_generation_prompt=True)
        upto = render(tokenizer, messages[: k + 1])
        if not (whole.startswith(upto) and upto.startswith(prompt) and len(prompt) >= done):
            raise ChatError(
                f"the chat template does not render this conversation turn by turn (the text "
                f"up to message {k}, an assistant reply, is not a prefix of the whole), so its "
                "reply tokens cannot be told apart"
            )
        out += [(whole[done : len(prompt)], False), (whole[len(prompt) : len(upto)], True)]
        done = len(upto)
    out.append((whole[done:], False))
    return [(text, reply) for text, reply in out if text]


def encode(tokenizer, messages: list[dict]) -> np.ndarray:
    """The conversation's token ids (int32), every token outside an assistant reply flagged
    NO_LOSS (`compiler.loss_mask`)."""
    parts = []
    for text, reply in pieces(tokenizer, messages):
        ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
        parts.append(ids if reply else no_loss(ids))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)
