"""Stage 5, ir: a checked spec -> the typed IR, with invariant passes and a printout.

This is the only compiler module that reads the spec layer's types; everything after it
takes `ProgramIR`.
"""

from __future__ import annotations

import dataclasses

from tandem_dsl import checks
from tandem_dsl.model import NgramDraft, Spec

from .errors import IRInvariantError
from .ir import (
    AdaptiveIR,
    DecodeIR,
    DecoderIR,
    MeshIR,
    ObjectiveIR,
    OptimizerIR,
    ProgramIR,
    ProjectionIR,
    RopeScalingIR,
    SamplingIR,
    ScaleIR,
    TeacherCacheIR,
    TrainStageIR,
    WiringIR,
)


def build_ir(spec: Spec) -> ProgramIR:
    models = tuple(
        DecoderIR(
            name=name,
            vocab=m.vocab,
            d_model=m.d_model,
            n_layers=m.n_layers,
            n_heads=m.n_heads,
            n_kv_heads=m.n_kv_heads,
            d_ff=m.d_ff,
            max_len=spec.shapes.max_len,
            norm=m.norm,
            norm_eps=m.norm_eps,
            mlp=m.mlp,
            pos=m.pos,
            rope_theta=m.rope_theta,
            rope_scaling=_rope_scaling(m.rope_scaling),
            head_dim=m.head_dim or 0,
            qkv_bias=m.qkv_bias,
            tie_embeddings=m.tie_embeddings,
            dtype=m.dtype,
            trainable=m.trainable,
            embed_trainable=m.embed_trainable,
        )
        for name, m in spec.models.items()
    )
    prog = ProgramIR(
        name=spec.name,
        models=models,
        wirings=tuple(_wiring(spec, w) for w in spec.wiring),
        train=tuple(_stage(spec, s) for s in spec.train),
        decode=_decode(spec),
        batch=spec.shapes.batch,
        max_len=spec.shapes.max_len,
        mesh=MeshIR(
            axes=(("data", spec.mesh.data), ("model", spec.mesh.model)),
            rules=tuple((r[0], r[1]) for r in spec.sharding),
        ),
    )
    verify_ir(prog)
    return prog


def _rope_scaling(s) -> RopeScalingIR | None:
    if s is None:
        return None
    return RopeScalingIR(
        rope_type=s.rope_type,
        factor=s.factor,
        low_freq_factor=s.low_freq_factor,
        high_freq_factor=s.high_freq_factor,
        original_max_position_embeddings=s.original_max_position_embeddings,
    )


def _wiring(spec: Spec, w) -> WiringIR:
    small = spec.models[w.query]
    if w.kind == "none":
        return WiringIR(
            kind="none",
            query=w.query,
            memory=None,
            layer_map=(None,) * small.n_layers,
            projection=None,
            block=w.block,
            block_max=w.block,
        )
    large, proj = spec.models[w.memory], spec.projections[w.via]
    return WiringIR(
        kind="tandem",
        query=w.query,
        memory=w.memory,
        layer_map=checks.layer_map(spec, w),
        projection=ProjectionIR(
            name=w.via,
            kind=proj.type,
            d_in=large.d_model,
            d_out=small.d_model,
            per_layer=proj.per_layer,
            bias=proj.bias,
            hidden=proj.hidden,
            init=proj.init,
        ),
        block=w.block,
        block_max=w.block_max or w.block,
        random_offset=w.random_offset,
        fuse=w.fuse,
        predict=w.predict,
    )


def _stage(spec: Spec, s) -> TrainStageIR:
    trained = s.objective.model or next(n for n in s.trainable if n in spec.models)
    o, c = s.optimizer, s.teacher_cache
    return TrainStageIR(
        name=s.name,
        objective=ObjectiveIR(
            kind=s.objective.kind,
            model=trained,
            teacher=s.objective.teacher,
            weight=s.objective.weight,
            temperature=s.objective.temperature,
            draft_vocab=s.objective.draft_vocab,
        ),
        trainable=tuple(s.trainable),
        optimizer=OptimizerIR(
            kind=o.kind,
            lr=o.lr,
            warmup=o.warmup,
            schedule=o.schedule,
            weight_decay=o.weight_decay,
            clip=o.clip,
            b1=o.b1,
            b2=o.b2,
        ),
        steps=s.steps,
        batch=s.batch,
        seq_len=s.seq_len,
        eval_every=s.eval_every,
        eval_batches=s.eval_batches,
        checkpoint_every=s.checkpoint_every,
        seed=s.seed,
        teacher_cache=c and TeacherCacheIR(batches=c.batches, top_k=c.top_k, noise=c.noise),
        scale=ScaleIR(**dataclasses.asdict(s.scale)),
    )


def _decode(spec: Spec) -> DecodeIR | None:
    d = spec.decode
    if d is None:
        return None
    a = d.adaptive
    return DecodeIR(
        policy=d.policy,
        target=d.target or next(iter(spec.models)),
        draft=d.draft if isinstance(d.draft, str) else None,
        draft_ngram=d.draft.n if isinstance(d.draft, NgramDraft) else 0,
        draft_vocab=d.draft_vocab,
        lookup=d.lookup,
        lookup_min=d.lookup_min,
        lookup_gamma=d.lookup_gamma,
        backend=d.backend,
        gamma=d.gamma,
        free_token=d.free_token,
        adaptive=None
        if a is None
        else AdaptiveIR(
            rule=a.rule,
            router=a.router,
            hidden=a.hidden,
            top_k=a.top_k,
            threshold=a.threshold,
            max_gamma=a.max_gamma,
            activation=a.activation,
        ),
        sampling=SamplingIR(
            temperature=d.sampling.temperature,
            top_k=d.sampling.top_k,
            top_p=d.sampling.top_p,
            seed=d.sampling.seed,
        ),
        max_new_tokens=d.max_new_tokens,
    )


def verify_ir(prog: ProgramIR) -> None:
    """Invariants between stages: every small layer has exactly one wiring entry, dims agree."""
    names = [m.name for m in prog.models]
    if len(set(names)) != len(names):
        raise IRInvariantError(f"duplicate model names {names}")
    for w in prog.wirings:
        small = prog.model(w.query)
        if len(w.layer_map) != small.n_layers:
            raise IRInvariantError(f"{w.query}: layer map covers {len(w.layer_map)} layers")
        if w.kind == "none":
            if w.projection is not None or any(s is not None for s in w.layer_map):
                raise IRInvariantError(f"{w.query}: independent model with memory")
            continue
        large = prog.model(w.memory)
        if not all(s is None or 0 <= s <= large.n_layers for s in w.layer_map):
            raise IRInvariantError(f"{w.query}: layer map {w.layer_map} out of range")
        p = w.projection
        if (p.d_in, p.d_out) != (large.d_model, small.d_model):
            raise IRInvariantError(f"projection {p.name}: {p.d_in}->{p.d_out}")


def format_ir(prog: ProgramIR) -> str:
    """A readable printout of the IR: models, wiring table, stages, decode."""
    lines = [f"program {prog.name}  batch={prog.batch} max_len={prog.max_len}"]
    for m in prog.models:
        lines.append(
            f"  model {m.name}: {m.n_layers}L d={m.d_model} heads={m.n_heads}/{m.n_kv_heads}"
            f"x{m.head_dim} ff={m.d_ff} vocab={m.vocab} {m.norm}/{m.mlp}/{m.pos}"
            f"{' qkv-bias' if m.qkv_bias else ''}{' llama3-rope' if m.rope_scaling else ''}"
            f" {m.dtype}"
            f"{'' if m.trainable else ' frozen'} params={m.param_count:,}"
        )
    for w in prog.wirings:
        if w.kind == "none":
            lines.append(f"  wiring {w.query}: independent")
            continue
        p = w.projection
        lines.append(
            f"  wiring {w.query} <- {w.memory} via {p.name} ({p.kind}, "
            f"{'per layer' if p.per_layer else 'shared'}) block={w.block}"
            + (f"..{w.block_max}" if w.block_max != w.block else "")
        )
        for j, src in enumerate(w.layer_map):
            lines.append(
                f"    {w.query}[{j}] <- {w.memory}[{src}]"
                if src is not None
                else f"    {w.query}[{j}] causal"
            )
    for s in prog.train:
        o = s.objective
        lines.append(
            f"  stage {s.name}: {o.kind} on {o.model}"
            + (f" (teacher {o.teacher}, w={o.weight})" if o.teacher else "")
            + f", trainable {', '.join(s.trainable)}, {s.steps} steps x {s.batch}x{s.seq_len}"
        )
    if prog.decode is not None:
        d = prog.decode
        draft = d.draft or (f"ngram(n={d.draft_ngram})" if d.draft_ngram else "-")
        if d.lookup:
            draft += f" + lookup(n={d.lookup})"
        lines.append(
            f"  decode {d.policy}: target {d.target}, draft {draft}, gamma {d.gamma}, "
            f"max_new_tokens {d.max_new_tokens}, "
            + ("greedy" if d.sampling.greedy else f"T={d.sampling.temperature}")
        )
    return "\n".join(lines)
