"""Prompts made from text: code cut before a function's `def`, a message in a chat template,
and prompt files.

A prompt file (`bench.prompt_file`, `tandemc run SPEC generate --prompt-file FILE.jsonl`) is
JSONL, one prompt per line (blank lines skipped; other keys ignored):

    {"prompt": "def fib(n):", "kind": "code"}
    {"messages": [{"role": "user", "content": "Name three primes."}], "kind": "qa"}

`prompt` is given to the model as it is; `messages` is rendered with the tokenizer's chat
template, ready for the assistant's reply (`runtime.chat`; the last message must not be the
assistant's). `kind` (default "text", or "chat" for messages) is the prompt's class: the bench
table has a speedup column per class. Spec-Bench and MT-Bench question files (`{"turns":
[...], "category": ...}`) convert with one line (the first turn; later turns need the
model's answer to the first):

    jq -c '{messages: [{role: "user", content: .turns[0]}], kind: .category}' question.jsonl
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .tokenizer import prompt_ids

MAX_PROMPT_FILE_BYTES = 64 << 20
CONVERT_HINT = (
    'each line: {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}, with '
    'an optional "kind"; Spec-Bench / MT-Bench questions convert with jq -c \'{messages: '
    '[{role: "user", content: .turns[0]}], kind: .category}\' question.jsonl'
)


def code_before_def(tokenizer, lines: list[str], i: int, max_tokens: int) -> str | None:
    """Line i (a `def`) and as many whole lines before it as fit in max_tokens, or None."""
    start = i
    while start > 0 and len(prompt_ids(tokenizer, "".join(lines[start - 1 : i + 1]))) <= max_tokens:
        start -= 1
    text = "".join(lines[start : i + 1])
    return text if len(prompt_ids(tokenizer, text)) <= max_tokens else None


def chat_prompt(tokenizer, message: str) -> str:
    """The user message in the tokenizer's chat template, ready for the assistant's reply."""
    from .chat import ChatError, render

    try:
        return render(tokenizer, [{"role": "user", "content": message}], add_generation_prompt=True)
    except ChatError as e:
        raise UserError(f"chat prompt: {e}") from None


@dataclass(frozen=True)
class FilePrompt:
    """One line of a prompt file: where it is (`file:line`), its class, and the prompt text
    or the chat messages it holds."""

    where: str
    kind: str
    prompt: str | None = None
    messages: list | None = None

    def text(self, tokenizer, field: tuple | None = None) -> str:
        """The prompt as the model is given it (messages in the chat template)."""
        if self.messages is None:
            return self.prompt
        from .chat import ChatError, render, require_template

        try:
            require_template(tokenizer, "chat prompts (messages)")
            return render(tokenizer, self.messages, add_generation_prompt=True)
        except ChatError as e:
            raise UserError(f"{self.where}: {e}", field=field) from None
        except UserError as e:
            raise UserError(f"{self.where}: {e}", field=field, hint=e.hint) from None


def read_prompt_file(path: str | Path, field: tuple | None = None) -> list[FilePrompt]:
    """The prompts of a JSONL prompt file (module docstring); a UserError (about spec value
    `field` when given) names the file and line of a bad one."""
    from tandem_dsl.model import NAME_HINT, valid_name

    from .chat import ChatError, check_messages, json_kind, valid_text

    def bad(problem: str, where: str | Path = path, hint: str = CONVERT_HINT):
        return UserError(f"prompt file {where}: {problem}", field=field, hint=hint)

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PROMPT_FILE_BYTES + 1)  # bounded: /dev/zero is a file too
    except OSError as e:
        raise bad(f"cannot read it ({e.strerror})", hint="give an existing JSONL file") from None
    if len(data) > MAX_PROMPT_FILE_BYTES:
        raise bad(f"larger than {MAX_PROMPT_FILE_BYTES >> 20} MiB", hint="split it")
    out = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise bad("the line is not UTF-8 text", where) from None
        except json.JSONDecodeError as e:
            raise bad(f"not JSON ({e.msg} at column {e.colno})", where) from None
        if not isinstance(obj, dict):
            raise bad(f"a JSON {json_kind(obj)}, not an object", where)
        if ("prompt" in obj) == ("messages" in obj):
            which = "both" if "prompt" in obj else "neither"
            raise bad(f'{which} "prompt" and "messages": give exactly one', where)
        kind = obj.get("kind", "chat" if "messages" in obj else "text")
        if not isinstance(kind, str) or not valid_name(kind):
            raise bad(f'"kind" {json.dumps(kind)} cannot be a prompt class', where, NAME_HINT)
        if "prompt" in obj:
            if isinstance(obj["prompt"], str) and not valid_text(obj["prompt"]):
                raise bad('"prompt" is not valid Unicode (a lone surrogate)', where)
            if not isinstance(obj["prompt"], str) or not obj["prompt"]:
                got = json_kind(obj["prompt"]) if obj["prompt"] != "" else "empty string"
                raise bad(f'"prompt" is a {got}, not a non-empty string', where)
            out.append(FilePrompt(where, kind, prompt=obj["prompt"]))
            continue
        try:
            messages = check_messages(obj["messages"])
        except ChatError as e:
            raise bad(str(e), where) from None
        if messages[-1]["role"] == "assistant":
            raise bad(
                "the last message is the assistant's: a prompt ends with the turn the model "
                "answers",
                where,
            )
        out.append(FilePrompt(where, kind, messages=messages))
    if not out:
        raise bad("it holds no prompts")
    return out
