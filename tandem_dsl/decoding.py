"""The rules that tie a decode section's fields together, each written once.

The spec check (`tandem_dsl/checks.py`, `decoding`) reports a broken rule at its field with a
hint; the compiler (`compiler/decode/programs.py`, `loop_config`) raises the same message as
an `IRInvariantError` for a decode built in Python. Each rule returns None when it holds,
else what is wrong.
"""

from __future__ import annotations

DRAFTING = ("speed", "adaptive", "standalone")  # the policies with a drafter
MODEL_DRAFT_ONLY = ("speed", "adaptive")  # where draft_vocab and lookup apply


def missing_draft(policy: str, has_draft: bool) -> str | None:
    if policy in DRAFTING and not has_draft:
        return f"policy {policy} needs a draft"
    return None


def ngram_policy(policy: str, ngram: bool) -> str | None:
    if ngram and policy != "speed":
        return (
            f"prompt-lookup drafts (draft: {{kind: ngram}}) need policy speed, not {policy} "
            "(standalone generates with a model; adaptive stops on a model's confidence)"
        )
    return None


def standalone_draft(policy: str, model_draft: bool, tandem_wired: bool) -> str | None:
    if policy == "standalone" and not (model_draft and tandem_wired):
        return "standalone decoding needs a tandem-wired draft model"
    return None


def draft_memory(draft: str, memory: str | None, target: str) -> str | None:
    """A Tandem draft reads the model that verifies it (the verify pass writes its memory)."""
    if memory is not None and memory != target:
        return f"draft '{draft}' reads the memory of '{memory}', not of the target '{target}'"
    return None


def same_vocab(role: str, name: str, vocab: int, target: str, target_vocab: int) -> str | None:
    if vocab != target_vocab:
        return (
            f"{role} '{name}' (vocab {vocab}) and target '{target}' (vocab {target_vocab}) must "
            "share a vocabulary"
        )
    return None


def draft_vocab(policy: str, model_draft: bool, n: int, vocab: int) -> str | None:
    if not n:
        return None
    if policy not in MODEL_DRAFT_ONLY or not model_draft:
        return (
            "draft_vocab restricts a draft model's proposals; it needs policy speed or adaptive "
            "with a model draft (standalone would change the output)"
        )
    if n > vocab:
        return f"draft_vocab {n} exceeds the draft model's vocabulary ({vocab})"
    return None


def lookup(policy: str, model_draft: bool, n: int) -> str | None:
    if n and (policy not in MODEL_DRAFT_ONLY or not model_draft):
        return (
            "lookup adds prompt-lookup drafts to a draft model's rounds: it needs policy speed "
            "or adaptive and a model draft"
            + ("" if model_draft else " (draft {kind: ngram} is prompt lookup alone)")
        )
    return None


def adaptive_section(policy: str, has_adaptive: bool) -> str | None:
    if policy == "adaptive" and not has_adaptive:
        return "policy adaptive needs an `adaptive:` section"
    return None
