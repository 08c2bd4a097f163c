"""Rules that tie spec fields together, each written once.

The spec checks (`tandem_dsl/checks.py`) report a broken rule at its field, with a hint; the
compiler holds IR built in Python to the same rule and raises its message as an
`IRInvariantError` (`compiler/decode/programs.py` `loop_config`, `compiler/train/objective.py`
`plan_stage`, `compiler/ir.py`). A rule returns None when it holds, else what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable

# --- decoding

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


def trained_draft_vocab(n: int, vocab: int, drafts: bool, decode_n: int) -> str | None:
    """A stage's objective.draft_vocab n for a model of `vocab` ids; `drafts`: the model
    drafts in decoding or the bench, there with decode.draft_vocab `decode_n`."""
    if not n:
        return None
    if n > vocab:
        return f"draft_vocab {n} exceeds the model's vocabulary ({vocab})"
    if drafts and not 0 < decode_n <= n:
        cut = f"decode.draft_vocab {decode_n}" if decode_n else "all ids (no decode.draft_vocab)"
        return (
            f"the model trains for ids < {n} only but drafts from {cut}: it would propose ids "
            "it never learned"
        )
    return None


def lookup(policy: str, model_draft: bool, n: int) -> str | None:
    if n and (policy not in MODEL_DRAFT_ONLY or not model_draft):
        return (
            "lookup adds prompt-lookup drafts to a draft model's rounds: it needs policy speed "
            "or adaptive and a model draft"
            + ("" if model_draft else " (draft {kind: ngram} is prompt lookup alone)")
        )
    return None


def lookup_min(n: int, min_match: int) -> str | None:
    if min_match and not n:
        return "lookup_min refines hybrid drafting: it needs lookup > 0"
    if min_match > n:
        return f"lookup_min {min_match} is longer than the lookup's n ({n})"
    return None


def lookup_gamma(n: int, gamma: int, max_gamma: int | None) -> str | None:
    """max_gamma: the adaptive policy's longest draft (None for speed)."""
    if gamma and not n:
        return "lookup_gamma refines hybrid drafting: it needs lookup > 0"
    if gamma and max_gamma is not None and gamma > max_gamma:
        return f"lookup_gamma {gamma} drafts more than adaptive.max_gamma ({max_gamma})"
    return None


def adaptive_section(policy: str, has_adaptive: bool) -> str | None:
    if policy == "adaptive" and not has_adaptive:
        return "policy adaptive needs an `adaptive:` section"
    return None


# --- training stages


def learnable(student: str, tandem_reads: Iterable[tuple[str, str, str | None]]) -> set[str]:
    """The names a loss on `student` sends gradients to: the student and, when it is a Tandem
    model, the large model and the projection it reads. tandem_reads: (query, memory,
    projection) of every kind: tandem wiring. A distillation teacher is only a target."""
    out = {student}
    for query, memory, projection in tandem_reads:
        if query == student:
            out |= {memory} | ({projection} if projection else set())
    return out


# --- projections


def identity_projection(name: str, kind: str, d_in: int, d_out: int) -> str | None:
    """A projection that starts as the identity is a linear map between equal widths."""
    if kind != "linear":
        return f"projection '{name}' is {kind}: only a linear one starts as the identity"
    if d_in != d_out:
        return f"projection '{name}' maps {d_in} -> {d_out} dims: the identity needs equal widths"
    return None


def fused_wiring(fuse: int, n_large: int, unwired: bool) -> str | None:
    """A feature input reads a layer state the memory model has, into a query model whose every
    layer is wired (a partly wired one re-reads skipped tokens with a later feature)."""
    if fuse > n_large:
        return f"fuse reads layer state {fuse}, but the memory model has states 0..{n_large}"
    if unwired:
        return "fuse needs every layer of the query model wired (`layers` leaves some causal)"
    return None


FUSE_HINT = "fuse: 0..{n} (n: its last layer), with `layers` wiring every small layer"

PREDICT_PROBLEM = "predict needs every layer of the query model wired (`layers` leaves some causal)"
PREDICT_HINT = "drop `predict`, or wire every small layer in `layers`"


# --- training


def cached_model(memory: str | None, teacher: str | None) -> str | None:
    """The frozen model a stage's teacher cache stores: the large model its Tandem student
    reads (which is then also the teacher) or else its distillation teacher."""
    return memory or teacher


def teacher_cache(memory: str | None, teacher: str | None, trainable: Iterable[str]) -> str | None:
    """A teacher cache stores one frozen model's outputs, so the stage must read exactly one
    other model and leave it untrained."""
    if memory is None and teacher is None:
        return "the stage reads no other model, so there is nothing to cache"
    if memory is not None and teacher is not None and memory != teacher:
        return (
            f"the stage reads two models ('{memory}' through its wiring and teacher "
            f"'{teacher}'): a teacher cache stores one"
        )
    name = cached_model(memory, teacher)
    if name in trainable:
        return f"'{name}' trains in this stage: stored outputs of it would go stale"
    return None
