"""Stage 4, check: semantic checks over the typed spec, each a small registered function.

A check receives a `Context` (the typed spec, the resolved document for spans, and the
collector) and reports every problem it finds. `layer_map()` is also what the compiler
uses to turn `wiring[i].layers` into the per-small-layer table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from . import expr, from_weights, rules
from .diagnostics import Collector, did_you_mean
from .model import (
    NAME_HINT,
    OBJECTIVE_KINDS,
    PROJECTION_KINDS,
    Spec,
    Wiring,
    bad_name_message,
    valid_name,
)
from .source import Doc

RESERVED_STAGE_NAMES = ("generated", "router")  # other entries of a run directory
LOGICAL_AXES = ("batch", "length", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab")
CHECKS: list[Callable[[Context], None]] = []


def check(fn):
    CHECKS.append(fn)
    return fn


@dataclass
class Context:
    spec: Spec
    doc: Doc
    errors: Collector

    def error(self, code, message, path: tuple, hint=None, key=False):
        origin = self.doc.key_origin(path) if key else self.doc.origin(path)
        from .source import path_str

        self.errors.error(code, message, origin, path_str(path), hint)

    def model_ref(self, name, path, what="model") -> bool:
        if name in self.spec.models:
            return True
        self.error(
            "E-CHECK-UNKNOWN-MODEL",
            f"unknown {what} '{name}'",
            path,
            did_you_mean(name, self.spec.models) or f"models: {', '.join(self.spec.models)}",
        )
        return False


def run_checks(spec: Spec, doc: Doc, errors: Collector) -> None:
    ctx = Context(spec, doc, errors)
    for fn in CHECKS:
        fn(ctx)


def default_layer_map(n_small: int, n_large: int) -> tuple[int, ...]:
    """l(j) = ((j+1) * L_L) // L_S, so the last small layer reads the last layer (see
    docs/design.md)."""
    return tuple(((j + 1) * n_large) // n_small for j in range(n_small))


def layer_map(spec: Spec, w: Wiring, lookup=None) -> tuple[int | None, ...]:
    """The per-small-layer source layer of a tandem wiring (raises expr.ExprError)."""
    small, large = spec.models[w.query], spec.models[w.memory]
    if w.layers is None:
        return default_layer_map(small.n_layers, large.n_layers)
    sizes = {w.query: small.n_layers, w.memory: large.n_layers}
    return expr.parse_layer_map(w.layers, lookup or _no_lookup, sizes, w.query, w.memory)


def _no_lookup(path):
    raise KeyError(path)


@check
def embed_init(ctx: Context):
    for name, m in ctx.spec.models.items():
        src = m.init.embed_from
        p = ("models", name, "init", "embed_from")
        if src is None or not ctx.model_ref(src, p):
            continue
        if src == name:
            ctx.error(
                "E-CHECK-EMBED-INIT",
                f"model '{name}' cannot take its embeddings from itself",
                p,
                "name another (wider) model, e.g. the large one, or remove embed_from",
            )
        elif _vocab(ctx, src) != _vocab(ctx, name):
            ctx.error(
                "E-CHECK-VOCAB",
                f"'{name}' (vocab {_vocab(ctx, name)}) cannot start from the embeddings of "
                f"'{src}' (vocab {_vocab(ctx, src)})",
                p,
                "give both models the same vocab, or remove embed_from",
            )
        elif ctx.spec.models[src].d_model < m.d_model:
            ctx.error(
                "E-CHECK-EMBED-INIT",
                f"'{src}' has d_model {ctx.spec.models[src].d_model}, fewer than the "
                f"{m.d_model} of '{name}': embeddings can only be reduced",
                p,
                "take the embeddings from a model at least as wide, or remove embed_from",
            )
        else:
            _copy_layers(ctx, name, m, ctx.spec.models[src])
    for name, m in ctx.spec.models.items():
        if m.init.copy_layers and m.init.embed_from is None:
            ctx.error(
                "E-CHECK-EMBED-INIT",
                f"model '{name}' copies layers {m.init.copy_layers} but names no model to "
                "copy them from",
                ("models", name, "init", "copy_layers"),
                "add `embed_from: large` (the model whose layers and table it starts from)",
            )


_LAYER_SHAPE = ("d_model", "n_heads", "n_kv_heads", "d_ff", "mlp", "norm", "pos")


def _copy_layers(ctx: Context, name: str, m, src) -> None:
    """copy_layers needs a source of the same layer shape and layer indices it has."""
    p = ("models", name, "init", "copy_layers")
    if not m.init.copy_layers:
        return
    differ = [f for f in _LAYER_SHAPE if getattr(m, f) != getattr(src, f)]
    if differ:
        ctx.error(
            "E-CHECK-EMBED-INIT",
            f"'{name}' cannot copy layers of '{m.init.embed_from}': they differ in "
            + ", ".join(f"{f} ({getattr(m, f)} vs {getattr(src, f)})" for f in differ),
            p,
            "give the copying model the source's " + ", ".join(differ) + ", or remove copy_layers",
        )
    if len(m.init.copy_layers) > m.n_layers:
        ctx.error(
            "E-CHECK-EMBED-INIT",
            f"'{name}' has {m.n_layers} layers but copy_layers lists {len(m.init.copy_layers)}",
            p,
            f"list at most {m.n_layers} layers",
        )
    for j, layer in enumerate(m.init.copy_layers):
        if not 0 <= layer < src.n_layers:
            ctx.error(
                "E-CHECK-EMBED-INIT",
                f"'{m.init.embed_from}' has layers 0..{src.n_layers - 1}, not {layer}",
                p + (j,),
                f"pick layers in 0..{src.n_layers - 1}",
            )


@check
def some_model(ctx: Context):
    if not ctx.spec.models:
        ctx.error(
            "E-CHECK-UNKNOWN-MODEL",
            "the spec defines no models",
            ("models",),
            "add one, e.g. models: {large: {d_model: 256, n_layers: 4, n_heads: 4}}",
        )


@check
def init_paths(ctx: Context):
    for name, m in ctx.spec.models.items():
        p = ("models", name, "init")
        if m.init.from_ != "random" and not m.init.path:
            ctx.error(
                "E-CHECK-INIT",
                f"init from {m.init.from_} needs a path",
                p + ("from",),
                {
                    "checkpoint": "path: runs/<spec name>/<stage> (a finished stage's folder)",
                    "gguf": "path: the .gguf file (e.g. from `tandemc pull smollm2-135m`)",
                    "safetensors": "path: a folder with config.json and *.safetensors",
                }[m.init.from_],
            )
        elif m.init.from_ == "random" and m.init.path:
            ctx.error(
                "E-CHECK-INIT",
                "path has no meaning for random init",
                p + ("path",),
                "set from: checkpoint, gguf or safetensors, or remove path",
                key=True,
            )


@check
def heads(ctx: Context):
    for name, m in ctx.spec.models.items():
        p = ("models", name)
        width = m.head_dim or m.d_model // m.n_heads
        if m.head_dim is None and m.d_model % m.n_heads:
            ctx.error(
                "E-CHECK-HEAD-DIM",
                f"d_model {m.d_model} is not divisible by n_heads {m.n_heads}",
                p + ("n_heads",),
                "pick n_heads so that d_model / n_heads is an integer (e.g. head_dim 64), or "
                "give the head width as head_dim",
            )
        elif m.pos == "rope" and width % 2:
            ctx.error(
                "E-CHECK-ROPE-DIM",
                f"RoPE needs an even head dimension, got {width}",
                p + (("head_dim",) if m.head_dim else ("n_heads",)),
                "pick an even head width (d_model / n_heads, or head_dim), or use pos: learned",
            )
        if m.n_heads % m.n_kv_heads:
            ctx.error(
                "E-CHECK-KV-HEADS",
                f"n_heads {m.n_heads} is not divisible by n_kv_heads {m.n_kv_heads}",
                p + ("n_kv_heads",),
                "n_kv_heads must divide n_heads (grouped-query attention)",
            )
        scaling = m.rope_scaling
        if scaling is not None and m.pos != "rope":
            ctx.error(
                "E-CHECK-ROPE-SCALING",
                f"rope_scaling needs pos: rope, not {m.pos}",
                p + ("rope_scaling",),
                "remove rope_scaling, or use pos: rope",
            )
        elif scaling is not None and scaling.high_freq_factor <= scaling.low_freq_factor:
            ctx.error(
                "E-CHECK-ROPE-SCALING",
                f"high_freq_factor {scaling.high_freq_factor} must exceed low_freq_factor "
                f"{scaling.low_freq_factor}",
                p + ("rope_scaling", "high_freq_factor"),
                "Llama 3.x uses low_freq_factor 1 and high_freq_factor 4",
            )


@check
def weights_agree(ctx: Context):
    """A value the spec states for a model with a weight file must be the file's."""
    for name, m in ctx.spec.models.items():
        if m.init.from_ not in from_weights.WEIGHT_KINDS or not m.init.path:
            continue
        arch, _ = from_weights.read_architecture(m.init.from_, m.init.path)
        if arch is None:
            continue  # not there yet, or unreadable: loading the weights reports it
        stated = dataclasses.asdict(m)
        for key in from_weights.disagreements(stated, arch.values):
            theirs = from_weights.shown(key, arch.values)
            ctx.error(
                "E-CHECK-WEIGHTS",
                f"model '{name}': {key} is {from_weights.shown(key, stated)}, but the weights "
                f"in {m.init.path} have {theirs}",
                ("models", name, key),
                f"remove {key} (the weights set it) or write {theirs}",
            )


@check
def projections(ctx: Context):
    for name, proj in ctx.spec.projections.items():
        p = ("projections", name)
        ctx.model_ref(proj.from_, p + ("from",))
        ctx.model_ref(proj.to, p + ("to",))
        if PROJECTION_KINDS.get(proj.type) and proj.hidden <= 0:
            ctx.error(
                "E-CHECK-PROJECTION-HIDDEN",
                f"a {proj.type} projection needs a hidden width",
                p + ("type",),
                "add `hidden: 256` (or use type: linear)",
            )
        if proj.init == "identity":
            _identity_projection(ctx, name, proj)


def _identity_projection(ctx: Context, name: str, proj) -> None:
    models = ctx.spec.models
    if proj.from_ not in models or proj.to not in models:
        return
    d_in, d_out = models[proj.from_].d_model, models[proj.to].d_model
    problem = rules.identity_projection(name, proj.type, d_in, d_out)
    if problem:
        hint = "use init: random, or a linear projection between models of one d_model"
        ctx.error("E-CHECK-PROJECTION-INIT", problem, ("projections", name, "init"), hint)


@check
def wiring(ctx: Context):
    seen: dict[str, int] = {}
    for i, w in enumerate(ctx.spec.wiring):
        p = ("wiring", i)
        if not ctx.model_ref(w.query, p + ("query",)):
            continue
        if w.query in seen:
            ctx.error(
                "E-CHECK-WIRING-DUP",
                f"model '{w.query}' is wired twice (also in wiring[{seen[w.query]}])",
                p + ("query",),
                "keep one wiring per small model (it may read several layers through `layers`)",
            )
        seen[w.query] = i
        if w.kind == "none":
            for key in ("memory", "via", "layers", "fuse", "predict"):
                if getattr(w, key) is not None:
                    ctx.error(
                        "E-CHECK-WIRING-NONE",
                        f"`{key}` has no meaning for kind: none (an independent model)",
                        p + (key,),
                        f"remove `{key}` or use kind: tandem",
                        key=True,
                    )
            continue
        missing = [k for k in ("memory", "via") if getattr(w, k) is None]
        for key in missing:
            ctx.error(
                "E-CHECK-WIRING-MISSING",
                f"a tandem wiring needs `{key}`",
                p + ("kind",),
                "memory: the large model; via: a projection name",
            )
        if missing or not ctx.model_ref(w.memory, p + ("memory",)):
            continue
        if w.memory == w.query:
            ctx.error(
                "E-CHECK-WIRING-SELF",
                "a model cannot read itself",
                p + ("memory",),
                "memory names the large model that the query model reads",
            )
            continue
        _check_projection(ctx, w, p)
        if w.block_max is not None and w.block_max < w.block:
            ctx.error(
                "E-CHECK-BLOCK",
                f"block_max {w.block_max} is smaller than block {w.block}",
                p + ("block_max",),
                f"set block_max >= {w.block}, or remove it for a fixed block",
            )
        longest = max((w.block, w.block_max or 0))
        for stage in ctx.spec.train:
            if w.query in stage.trainable and longest >= stage.seq_len:
                ctx.error(
                    "E-CHECK-BLOCK",
                    f"block {longest} is not shorter than stage '{stage.name}''s seq_len "
                    f"{stage.seq_len}: '{w.query}' would never read a block of '{w.memory}'",
                    p + ("block_max" if w.block_max and w.block_max > w.block else "block",),
                    "use a block well below seq_len (the paper trains with 2 or 3)",
                )
                break
        try:
            wired = layer_map(ctx.spec, w)
        except expr.ExprError as e:
            origin = ctx.doc.origin(p + ("layers",))
            if origin.is_file or origin.source.startswith("cli:"):
                origin = origin.shifted(e.start, e.end)
            ctx.errors.error(e.code, e.message, origin, f"wiring[{i}].layers", e.hint)
            continue
        if w.fuse is not None:
            n_large = ctx.spec.models[w.memory].n_layers
            problem = rules.fused_wiring(w.fuse, n_large, None in wired)
            if problem:
                ctx.error("E-CHECK-FUSE", problem, p + ("fuse",), rules.FUSE_HINT.format(n=n_large))
        if w.predict is not None and None in wired:
            ctx.error(
                "E-CHECK-PREDICT", rules.PREDICT_PROBLEM, p + ("predict",), rules.PREDICT_HINT
            )


def _check_projection(ctx: Context, w: Wiring, p: tuple) -> None:
    proj = ctx.spec.projections.get(w.via)
    if proj is None:
        ctx.error(
            "E-CHECK-UNKNOWN-PROJECTION",
            f"unknown projection '{w.via}'",
            p + ("via",),
            did_you_mean(w.via, ctx.spec.projections) or "define it under `projections:`",
        )
        return
    if (proj.from_, proj.to) != (w.memory, w.query):
        ctx.error(
            "E-CHECK-PROJECTION-ENDPOINTS",
            f"projection '{w.via}' maps {proj.from_} -> {proj.to}, "
            f"but this wiring needs {w.memory} -> {w.query}",
            p + ("via",),
            f"set projections.{w.via}.from: {w.memory} and to: {w.query}",
        )


@check
def names(ctx: Context):
    spec = ctx.spec
    named = [(spec.name, ("name",))]  # model and projection names: `schema.validate`
    named += [(s.name, ("train", i, "name")) for i, s in enumerate(spec.train)]
    for name, path in named:
        if not valid_name(name):
            ctx.error("E-CHECK-NAME", bad_name_message(name), path, NAME_HINT)
    for name in set(spec.models) & set(spec.projections):
        ctx.error(
            "E-CHECK-NAME",
            f"'{name}' names both a model and a projection (trainable lists mix the two)",
            ("projections", name),
            "rename the projection, e.g. l2s",
            key=True,
        )
    seen = {}
    for i, stage in enumerate(spec.train):
        p = ("train", i, "name")
        if stage.name in seen:
            ctx.error(
                "E-CHECK-STAGE-NAME",
                f"stage name '{stage.name}' is used twice (also train[{seen[stage.name]}]): "
                "each stage has its own folder",
                p,
                "rename one of them",
            )
        elif stage.name in RESERVED_STAGE_NAMES:
            ctx.error(
                "E-CHECK-STAGE-NAME",
                f"'{stage.name}' is a reserved folder of the run directory",
                p,
                "rename the stage",
            )
        seen.setdefault(stage.name, i)


@check
def training(ctx: Context):
    names = set(ctx.spec.models) | set(ctx.spec.projections)
    for i, stage in enumerate(ctx.spec.train):
        p = ("train", i)
        if not stage.trainable:
            ctx.error(
                "E-CHECK-UNKNOWN-TRAINABLE",
                f"stage '{stage.name}' trains nothing: its trainable list is empty",
                p + ("trainable",),
                "list the models or projections it trains, e.g. trainable: [small, l2s]",
            )
        for j, name in enumerate(stage.trainable):
            if name in stage.trainable[:j]:
                ctx.error(
                    "E-CHECK-UNKNOWN-TRAINABLE",
                    f"'{name}' is listed twice",
                    p + ("trainable", j),
                    "list each model or projection once",
                )
            elif name not in names:
                ctx.error(
                    "E-CHECK-UNKNOWN-TRAINABLE",
                    f"'{name}' is neither a model nor a projection",
                    p + ("trainable", j),
                    did_you_mean(name, names) or f"choose from: {', '.join(sorted(names))}",
                )
            elif name in ctx.spec.models and not ctx.spec.models[name].trainable:
                ctx.error(
                    "E-CHECK-FROZEN",
                    f"model '{name}' is frozen (trainable: false) but listed as trainable",
                    p + ("trainable", j),
                    f"remove '{name}' from this list, or set models.{name}.trainable: true",
                )
        obj = stage.objective
        if obj.model is not None:
            ctx.model_ref(obj.model, p + ("objective", "model"))
        # the model the loss is on (as the compiler resolves it)
        student = obj.model or next((n for n in stage.trainable if n in ctx.spec.models), None)
        _learnable(ctx, stage, student, p, names)
        for needed in OBJECTIVE_KINDS[obj.kind]:
            if getattr(obj, needed) is None:
                ctx.error(
                    "E-CHECK-OBJECTIVE",
                    f"a {obj.kind} objective needs a {needed}",
                    p + ("objective", "kind"),
                    f"add `{needed}: large`",
                )
        if obj.teacher is not None and ctx.model_ref(obj.teacher, p + ("objective", "teacher")):
            if student in ctx.spec.models and _vocab(ctx, student) != _vocab(ctx, obj.teacher):
                ctx.error(
                    "E-CHECK-VOCAB",
                    f"teacher '{obj.teacher}' (vocab {_vocab(ctx, obj.teacher)}) and student "
                    f"'{student}' (vocab {_vocab(ctx, student)}) have different vocabularies",
                    p + ("objective", "teacher"),
                    "distillation compares token distributions: give both models the same vocab",
                )
        if student in ctx.spec.models:
            _trained_draft_vocab(ctx, obj.draft_vocab, student, p + ("objective", "draft_vocab"))
        if stage.teacher_cache is not None and student in ctx.spec.models:
            memory = next(
                (w.memory for w in ctx.spec.wiring if w.kind == "tandem" and w.query == student),
                None,
            )
            problem = rules.teacher_cache(memory, obj.teacher, stage.trainable)
            if problem:
                ctx.error(
                    "E-CHECK-TEACHER-CACHE",
                    problem,
                    p + ("teacher_cache",),
                    "remove teacher_cache from this stage; it serves a stage that reads one "
                    "frozen model (a drafter distilled from it, or a Tandem model reading it)",
                )
        if stage.batch % stage.scale.grad_accum:
            ctx.error(
                "E-CHECK-GRAD-ACCUM",
                f"batch {stage.batch} does not split into {stage.scale.grad_accum} equal "
                "micro-batches",
                p + ("scale", "grad_accum"),
                "make grad_accum a divisor of the stage's batch",
            )
        if stage.seq_len > ctx.spec.shapes.max_len:
            ctx.error(
                "E-CHECK-SEQ-LEN",
                f"seq_len {stage.seq_len} exceeds shapes.max_len {ctx.spec.shapes.max_len}",
                p + ("seq_len",),
                "raise shapes.max_len or shorten the sequences",
            )


def _learnable(ctx: Context, stage, student: str | None, p: tuple, names: set[str]) -> None:
    """Every trainable entry gets a gradient from the loss: the objective's model and, for a
    Tandem model, the large model and projection it reads (a teacher is only a target)."""
    if student not in ctx.spec.models:
        return
    reads = [(w.query, w.memory, w.via) for w in ctx.spec.wiring if w.kind == "tandem"]
    learnable = rules.learnable(student, reads)
    for j, name in enumerate(stage.trainable):
        if name in names and name not in learnable:
            ctx.error(
                "E-CHECK-TRAINABLE",
                f"'{name}' gets no gradient from this stage's loss (on '{student}'): it can "
                f"train {', '.join(sorted(learnable))}",
                p + ("trainable", j),
                f"remove '{name}', or train it in a stage whose objective model reads it",
            )


def _trained_draft_vocab(ctx: Context, n: int, student: str, path: tuple) -> None:
    d, b = ctx.spec.decode, ctx.spec.bench
    drafts = d is not None and (d.draft == student or (b is not None and b.drafter == student))
    problem = rules.trained_draft_vocab(
        n, _vocab(ctx, student), drafts, d.draft_vocab if d is not None else 0
    )
    if problem:
        ctx.error(
            "E-CHECK-DRAFT-VOCAB",
            problem,
            path,
            f"keep it within the model's vocabulary and draft with the cut it trains for "
            f"(decode.draft_vocab: {n}), or train for all ids (remove it)",
        )


def _vocab(ctx: Context, name: str) -> int:
    return ctx.spec.models[name].vocab


@check
def decoding(ctx: Context):
    """The decode rules of `tandem_dsl/rules.py`, each reported at its field."""
    d = ctx.spec.decode
    if d is None:
        return
    p = ("decode",)
    if d.policy != "autoregressive" or d.target is not None:
        if d.target is None:
            ctx.error(
                "E-CHECK-DECODE-MISSING",
                f"policy {d.policy} needs a target",
                p + ("policy",),
                "add `target: large` (the model whose output decoding reproduces)",
            )
        elif not ctx.model_ref(d.target, p + ("target",)):
            return
    model_draft = isinstance(d.draft, str)
    problem = rules.missing_draft(d.policy, d.draft is not None)
    if problem:
        hint = "add `draft: small` (or {kind: ngram, n: 3} for speed)"
        ctx.error("E-CHECK-DECODE-MISSING", problem, p + ("policy",), hint)
        return
    if model_draft and not ctx.model_ref(d.draft, p + ("draft",)):
        return
    wiring = next((w for w in ctx.spec.wiring if w.query == d.draft), None)
    memory = wiring.memory if wiring is not None and wiring.kind == "tandem" else None
    ngram = d.draft is not None and not model_draft
    vocab = _vocab(ctx, d.draft) if model_draft else 0

    def report(code, problem, field, hint):
        if problem:
            ctx.error(code, problem, p + (field,), hint)

    report(
        "E-CHECK-DRAFT",
        rules.ngram_policy(d.policy, ngram),
        "policy",
        "use policy: speed for prompt lookup, or draft with a model",
    )
    report(
        "E-CHECK-STANDALONE",
        rules.standalone_draft(d.policy, model_draft, memory is not None),
        "draft",
        "draft with a model that has a kind: tandem wiring, or use policy: speed",
    )
    report(
        "E-CHECK-DRAFT-VOCAB",
        rules.draft_vocab(d.policy, model_draft, d.draft_vocab, vocab),
        "draft_vocab",
        "use policy speed with draft: <model> and at most its vocab, or 0 for all of it",
    )
    report(
        "E-CHECK-LOOKUP",
        rules.lookup(d.policy, model_draft, d.lookup),
        "lookup",
        "use `draft: <model>` with `lookup: 3`, or remove lookup",
    )
    example = "e.g. `lookup: 3, lookup_min: 2, lookup_gamma: 8`"
    report("E-CHECK-LOOKUP", rules.lookup_min(d.lookup, d.lookup_min), "lookup_min", example)
    max_gamma = d.adaptive.max_gamma if d.adaptive is not None else None
    report(
        "E-CHECK-LOOKUP",
        rules.lookup_gamma(d.lookup, d.lookup_gamma, max_gamma),
        "lookup_gamma",
        example + " (adaptive: at most max_gamma)",
    )
    report(
        "E-CHECK-DECODE-MISSING",
        rules.adaptive_section(d.policy, d.adaptive is not None),
        "policy",
        "add `adaptive: {threshold: 0.8, max_gamma: 16}`",
    )
    if model_draft and d.target is not None:
        report(
            "E-CHECK-DRAFT",
            rules.draft_memory(d.draft, memory, d.target),
            "draft",
            f"draft with a model wired to '{d.target}', or verify with target: {memory}",
        )
        _same_vocab_as_target(ctx, "draft", d.draft, d.target, p + ("draft",))
    _fits_the_cache(ctx, d, p)


def _fits_the_cache(ctx: Context, d, p: tuple) -> None:
    longest = d.gamma if d.adaptive is None else max(d.gamma, d.adaptive.max_gamma)
    max_len = ctx.spec.shapes.max_len
    if longest >= max_len:
        ctx.error(
            "E-CHECK-GAMMA",
            f"gamma {longest} must be below shapes.max_len {max_len}",
            p + ("gamma",),
            "drafts of 2-8 tokens are typical; raise shapes.max_len only for long outputs",
        )
    elif d.max_new_tokens + longest + 1 >= max_len:
        ctx.error(
            "E-CHECK-CACHE",
            f"max_new_tokens {d.max_new_tokens} + gamma {longest} + 1 do not fit in "
            f"shapes.max_len {max_len} (leave room for the prompt)",
            p + ("max_new_tokens",),
            "raise shapes.max_len or lower max_new_tokens",
        )


def _same_vocab_as_target(ctx: Context, role: str, name: str, target: str, path) -> None:
    problem = rules.same_vocab(role, name, _vocab(ctx, name), target, _vocab(ctx, target))
    if problem:
        ctx.error(
            "E-CHECK-VOCAB", problem, path, f"set models.{name}.vocab to {_vocab(ctx, target)}"
        )


@check
def bench(ctx: Context):
    b, d = ctx.spec.bench, ctx.spec.decode
    if b is None:
        return
    p = ("bench",)
    if d is None or d.target is None:
        ctx.error(
            "E-CHECK-DECODE-MISSING",
            "a bench section compares decoding methods of decode.target: add a decode section",
            p,
            "add `decode: {policy: speed, target: large, draft: small}`",
        )
        return
    for i, g in enumerate(b.gammas):
        if not 1 <= g < ctx.spec.shapes.max_len - d.max_new_tokens - 1:
            ctx.error(
                "E-CHECK-GAMMA",
                f"gamma {g} must be >= 1 and leave room for max_new_tokens {d.max_new_tokens} "
                f"in shapes.max_len {ctx.spec.shapes.max_len}",
                p + ("gammas", i),
                "use draft lengths such as [2, 4, 6]",
            )
    if b.drafter is not None and ctx.model_ref(b.drafter, p + ("drafter",)):
        _same_vocab_as_target(ctx, "drafter", b.drafter, d.target, p + ("drafter",))
    if b.code_prompts == 0 and not b.chat_prompts and not b.prompt_file:
        ctx.error(
            "E-CHECK-BENCH-PROMPTS",
            "the bench has no prompts: code_prompts is 0, chat_prompts is empty and there is "
            "no prompt_file",
            p + ("code_prompts",),
            "set code_prompts: 4 (cut from held-out corpus files), or a prompt_file",
        )


@check
def sharding(ctx: Context):
    axes = {"data", "model"}
    for axis in sorted(axes):
        size = getattr(ctx.spec.mesh, axis)
        if size == 0:
            ctx.error(
                "E-CHECK-MESH-AXIS",
                f"mesh axis '{axis}' has size 0",
                ("mesh", axis),
                "use a size >= 1, or -1 for the devices left over",
            )
    for i, rule in enumerate(ctx.spec.sharding):
        p = ("sharding", i)
        if len(rule) != 2:
            ctx.error(
                "E-CHECK-SHARDING-RULE",
                f"a sharding rule is a pair [logical axis, mesh axis], got {len(rule)} items",
                p,
                "write e.g. [mlp, model] or [vocab, null]",
            )
            continue
        logical, mesh_axis = rule
        if logical not in LOGICAL_AXES:
            ctx.error(
                "E-CHECK-LOGICAL-AXIS",
                f"unknown logical axis '{logical}'",
                p + (0,),
                did_you_mean(str(logical), LOGICAL_AXES) or f"one of {', '.join(LOGICAL_AXES)}",
            )
        if mesh_axis is not None and mesh_axis not in axes:
            ctx.error(
                "E-CHECK-MESH-AXIS",
                f"mesh axis '{mesh_axis}' does not exist",
                p + (1,),
                did_you_mean(str(mesh_axis), axes) or "mesh axes: data, model",
            )


@check
def tokenizer(ctx: Context):
    t = ctx.spec.tokenizer
    if t.kind == "bpe" and t.vocab_size < 257:
        ctx.error(
            "E-CHECK-TOKENIZER",
            f"a bpe tokenizer needs vocab_size >= 257 (256 bytes + merges), got {t.vocab_size}",
            ("tokenizer", "vocab_size") if t.vocab_size else ("tokenizer", "kind"),
            "add `vocab_size: 4096` (trained locally on the corpus)",
        )
    if t.kind in ("gguf", "hf-json") and not t.path:
        ctx.error(
            "E-CHECK-TOKENIZER",
            f"a {t.kind} tokenizer needs a path",
            ("tokenizer", "kind"),
            "add `path:` pointing at the file",
        )


@check
def data(ctx: Context):
    if ctx.spec.data.corpus is None and not ctx.spec.data.paths:
        ctx.error(
            "E-CHECK-DATA",
            "no training data: corpus is null and paths is empty",
            ("data",),
            "use corpus: stdlib or list text files under paths",
        )
    g = ctx.spec.data.generated
    if g is None:
        return
    p = ("data", "generated")
    if g.code_prompts + g.chat_prompts == 0:
        ctx.error(
            "E-CHECK-DATA",
            "data.generated has no prompts: code_prompts and chat_prompts are both 0",
            p,
            "set code_prompts or chat_prompts > 0, or remove data.generated",
        )
    if g.chat_prompts and ctx.spec.tokenizer.kind not in ("gguf", "hf-json"):
        ctx.error(
            "E-CHECK-DATA",
            f"chat_prompts need a tokenizer with a chat template, not '{ctx.spec.tokenizer.kind}'",
            p + ("chat_prompts",),
            "use an imported model's gguf or hf-json tokenizer, or set chat_prompts: 0",
        )
    ctx.model_ref(g.model, p + ("model",))
    for i, stage in enumerate(ctx.spec.train):
        rows = g.share * stage.batch  # a batch row is generated text or corpus, never both
        if abs(rows - round(rows)) > 1e-9:
            ctx.error(
                "E-CHECK-DATA",
                f"data.generated.share {g.share:g} of train[{i}]'s batch {stage.batch} is "
                f"{rows:g} rows: each row comes whole from the generated text or the corpus",
                p + ("share",),
                f"pick a share that gives whole rows, e.g. {round(rows) / stage.batch:g}",
            )
