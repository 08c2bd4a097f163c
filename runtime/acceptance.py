"""`tandemc run SPEC acceptance`: how many of each drafter's greedy drafts the target would
accept, measured by teacher forcing on the target's own greedy continuations of the bench
prompts instead of by running the decode loop (seconds instead of the bench's minutes, so a
drafter can be judged on many prompts).

Why it is exact for greedy SPEED at a fixed gamma: a draft is accepted iff it equals the
target's greedy token, so the tokens a drafter reads in every round are the target's own
text. An independent drafter's draft at position t is then its causal argmax at t. A Tandem
drafter's depends on the round's frontier f as well (M_L's states below f, its own from f
on): that is the frontier grid of block G and offset f mod G (`frontier_grid`), so G
teacher-forced passes give every round at every gamma <= G. The rounds are replayed with the
decode loop's rules (the first round starts at the last prompt token; a round emits its
accepted drafts and the correction; a row stops at EOS or max_new_tokens), which gives the
bench's tau and acceptance by draft position, up to fp32 near-ties between a batched
teacher-forced pass and the decode's step-by-step one.

Prompt lookup and hybrid drafting (`decode.lookup`, or the bench's `prompt_lookup` n) are
replayed the same way: the lookup's drafts at every frontier come from the decode's own
`lookup` over the target's text up to that frontier, and a round drafts by lookup when its
match is long enough (`lookup_min`), by the model otherwise. A Tandem drafter's draft after a
lookup round is still its row at that frontier; an independent drafter's is its causal argmax,
which is what the decode's catch-up gives it.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from compiler.decode.lookup import lookup, shortest_match
from compiler.nn.decoder import decoder_forward
from compiler.nn.tandem import frontier_grid, tandem_forward

from .bench import bench_prompts, kinds_of
from .errors import UserError


def run_acceptance(r) -> dict:
    from .run import encode_prompts, trained_params, with_eos

    b, d = r.spec.bench, r.prog.decode
    if b is None or d is None or d.draft is None:
        raise UserError(
            "acceptance needs a decode section with a draft model and a bench section (its "
            "prompts and gammas)"
        )
    d = with_eos(r, d)
    g_max = max(b.gammas)
    n_look = d.lookup or b.prompt_lookup
    look_g = max(d.lookup_gamma, g_max) if n_look else g_max  # the longest round
    prompts = bench_prompts(r, dataclasses.replace(d, gamma=max(look_g, 4)))
    tokens, lens = encode_prompts(r, [p for _, p in prompts], d)
    seqs = continuations(r, d, tokens, lens, look_g)
    params = trained_params(r)
    drafters = [d.draft, *([b.drafter] if b.drafter else [])]
    out = {"spec": r.spec.name, "max_new_tokens": d.max_new_tokens, "gammas": list(b.gammas),
           "prompts": [{"kind": k, "text": p} for k, p in prompts], "drafters": {},
           "lookup": {}}  # fmt: skip
    kinds = ["all", *kinds_of(prompts)]
    tables = lookup_tables(seqs, n_look, look_g) if n_look else None

    def rows_of(preds, min_match: int) -> dict:
        rows = {}
        for g in b.gammas:
            replays = []
            for i, (s, n) in enumerate(zip(seqs, lens, strict=True)):
                look = None
                if tables is not None and min_match:
                    look = Lookup(*tables[i], min_match, d.lookup_gamma or g)
                pred = None if preds is None else preds[i]
                replays.append(replay(pred, s, int(n), d.max_new_tokens, g, d.eos_id, look))
            rows[g] = {kind: _totals(replays, prompts, kind) for kind in kinds}
        return rows

    if n_look:
        out["lookup"][f"prompt lookup n={n_look}"] = rows_of(None, 1)
    for name in drafters:
        preds, ranks = drafts_and_ranks(r.prog, name, params, seqs, g_max, d.draft_vocab)
        rows = rows_of(preds, 0)
        if n_look:
            least = shortest_match(n_look, d.lookup_min)
            out["lookup"][f"{name} + lookup n={n_look} from {least}"] = rows_of(preds, least)
        out["drafters"][name] = {
            "tandem": r.prog.is_tandem(name),
            "gammas": rows,
            "agreement_by_distance": agreement_by_distance(
                preds, seqs, lens, d.max_new_tokens, g_max
            ),
            "first_draft_by_position": first_draft_by_position(preds, seqs, lens, d.max_new_tokens),
            "first_draft_top_k": first_draft_top_k(ranks, lens, d.max_new_tokens),
        }
    return out


def continuations(r, d, tokens, lens, extra: int) -> list[np.ndarray]:
    """Each prompt's ids and the target's greedy continuation of max_new_tokens + extra tokens
    (a round's last drafts are checked against tokens past max_new_tokens), not stopped at EOS
    (nor are a round's drafts)."""
    from compiler.sharded_programs import generate_program
    from compiler.sharding import Sharder

    from .run import autoregressive, decode_params

    ref = dataclasses.replace(
        autoregressive(d),
        max_new_tokens=d.max_new_tokens + extra,
        eos_id=-1,
        sampling=dataclasses.replace(d.sampling, temperature=0.0),
    )
    params, backend = decode_params(r, ref)
    fn = generate_program(r.prog, ref, Sharder.for_run(r.prog), batch=len(lens),
                          packed=backend.packed)  # fmt: skip
    out = fn(params, jnp.asarray(tokens), jnp.asarray(lens), jax.random.key(0))
    gen = np.asarray(out.tokens)
    return [np.concatenate([tokens[i, :n], gen[i]]).astype(np.int32) for i, n in enumerate(lens)]


def drafts_and_ranks(prog, name: str, params, seqs, g_max: int, draft_vocab: int) -> tuple:
    """Per sequence, the drafter's greedy draft after each position [R, T] and the rank among
    its draft ids of the token that follows there in the sequence [R, T] (0: the greedy draft;
    the number of draft ids: not a draft id), as `_predictor` gives them. The sequences are
    padded to one width (one compile; causal, so the zeros after a sequence change nothing
    before them)."""
    predict = _predictor(prog, name, g_max, draft_vocab)
    width = max(len(s) for s in seqs)
    drafts, ranks = [], []
    for s in seqs:
        pred, rank = predict(params, jnp.asarray(np.pad(s, (0, width - len(s)))[None]))
        drafts.append(np.asarray(pred)[:, : len(s)])
        ranks.append(np.asarray(rank)[:, : len(s)])
    return drafts, ranks


def _predictor(prog, name: str, g_max: int, draft_vocab: int):
    """jit(params, seq [1, T]) -> (the drafter's greedy draft after each position, the rank of
    the sequence's next token in its logits) [R, T] each: R = 1 for an independent drafter;
    for a Tandem drafter row o is the round whose frontier is o mod g_max. Drafts come from
    the first draft_vocab ids (all when 0), as in decoding."""
    cfg = prog.model(name)
    w = prog.wiring_of(name)
    v = draft_vocab or cfg.vocab

    def greedy_and_rank(logits, seq):
        logits = logits[0, :, :v]
        nxt = jnp.concatenate([seq[0, 1:], seq[0, :1]])  # the last position's is never read
        at = jnp.take_along_axis(logits, jnp.minimum(nxt, v - 1)[:, None], axis=-1)
        ids = jnp.arange(v)
        # ids ranked ahead of the next token: higher logits, or equal ones that argmax
        # (the first maximum) would pick first
        ahead = (logits > at) | ((logits == at) & (ids < nxt[:, None]))
        rank = jnp.where(nxt < v, ahead.sum(-1), v)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), rank.astype(jnp.int32)

    def predict(params, seq):
        if not prog.is_tandem(name):
            pred, rank = greedy_and_rank(decoder_forward(params[name], cfg, seq)[0], seq)
            return pred[None], rank[None]
        _, hiddens = decoder_forward(params[w.memory], prog.model(w.memory), seq)
        proj = params.get(w.projection.name)
        rows = []
        for o in range(g_max):
            frontier = frontier_grid(seq.shape[1], g_max, o)
            logits = tandem_forward(params[name], proj, cfg, w, hiddens, seq, frontier, depth=g_max)
            rows.append(greedy_and_rank(logits, seq))
        return jnp.stack([p for p, _ in rows]), jnp.stack([k for _, k in rows])

    return jax.jit(predict)


@partial(jax.jit, static_argnums=(1, 2))
def _lookup_everywhere(seq, n: int, gamma: int):
    t = seq.shape[0]
    return lookup(jnp.broadcast_to(seq, (t, t)), jnp.arange(t, dtype=jnp.int32), n, gamma)


def lookup_tables(seqs, n: int, gamma: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per sequence, prompt lookup's drafts [T, gamma] and match length [T] at every frontier
    (`compiler.decode.lookup`, which reads the text up to the frontier only). The sequences
    are padded to one width (one compile)."""
    width = max(len(s) for s in seqs)
    out = []
    for s in seqs:
        drafts, _, length = _lookup_everywhere(
            jnp.asarray(np.pad(s, (0, width - len(s)))), n, gamma
        )
        out.append((np.asarray(drafts)[: len(s)], np.asarray(length)[: len(s)]))
    return out


@dataclasses.dataclass(frozen=True)
class Lookup:
    """One sequence's prompt lookup, as a replay uses it."""

    drafts: np.ndarray  # [T, G] the lookup's drafts at each frontier
    length: np.ndarray  # [T] its match length there (0: none)
    min_match: int  # the shortest match that drafts the round
    gamma: int  # drafts in a lookup round


def round_drafts(pred: np.ndarray, f: int, gamma: int) -> np.ndarray:
    """The gamma drafts of a round that starts at frontier f, where it drafts from the target's
    text (up to its first rejected draft)."""
    return pred[f % len(pred), f : f + gamma]


def replay(pred: np.ndarray | None, seq: np.ndarray, prompt_len: int, max_new: int,
           gamma: int, eos: int, look: Lookup | None = None) -> dict:  # fmt: skip
    """The greedy SPEED rounds of one prompt (`compiler.decode.loops.speculative_step`):
    rounds, round_tokens (accepted drafts + the correction, summed), the rounds in which
    draft i was accepted and the rounds drafted by lookup. With `look` a round whose match is
    long enough drafts by lookup (hybrid drafting); pred None: prompt lookup alone (a round
    without a match verifies no draft)."""
    rounds = tokens = by_lookup = 0
    accepted = np.zeros(max(gamma, look.gamma if look else 0), np.int64)
    n = 0
    while n < max_new:
        f = prompt_len - 1 + n  # the round's first input, which the target has not read yet
        hit = look is not None and look.length[f] >= look.min_match
        if hit:
            drafts = look.drafts[f, : look.gamma]
        else:
            drafts = round_drafts(pred, f, gamma) if pred is not None else seq[:0]
        k = 0
        while k < len(drafts) and drafts[k] == seq[f + k + 1]:
            k += 1
        accepted[:k] += 1
        rounds += 1
        by_lookup += int(hit)
        tokens += k + 1
        emitted = seq[f + 1 : f + k + 2]
        n += k + 1
        if eos >= 0 and (emitted == eos).any():
            break
    return {"rounds": rounds, "round_tokens": tokens, "accepted_by_pos": accepted,
            "lookup_rounds": by_lookup}  # fmt: skip


def _totals(replays: list[dict], prompts, kind: str) -> dict:
    chosen = [x for x, (k, _) in zip(replays, prompts, strict=True) if kind in ("all", k)]
    rounds = sum(x["rounds"] for x in chosen)
    tokens = sum(x["round_tokens"] for x in chosen)
    accepted = sum(x["accepted_by_pos"] for x in chosen)
    return {
        "rounds": rounds,
        "round_tokens": tokens,
        "tau": tokens / max(rounds, 1),
        "acceptance_by_pos": (accepted / max(rounds, 1)).tolist(),
        "lookup_share": sum(x["lookup_rounds"] for x in chosen) / max(rounds, 1),
    }


def _at_distance(rows, n, max_new: int, d: int):
    """(positions t, the drafter's entry for the token after t as drafted at distance d + 1
    from its round's frontier: rows [R, T] read at row (t - d) mod R) over the continuation,
    frontiers from the prompt's end."""
    t = np.arange(int(n) - 1 + d, int(n) - 1 + max_new)
    return t, rows[(t - d) % len(rows), t]


def _agreement_at(pred, seq, n, max_new: int, d: int):
    """(positions t, whether the drafter's token after t, drafted at distance d + 1 from its
    round's frontier, equals the target's) over the continuation."""
    t, drafted = _at_distance(pred, n, max_new, d)
    return t, drafted == seq[t + 1]


def agreement_by_distance(preds, seqs, lens, max_new: int, g_max: int) -> list[float]:
    """How often the drafter's greedy token equals the target's at distance d = 1..G from the
    frontier (d = 1: the round's first draft), over every position of the continuations."""
    out = []
    for d in range(g_max):
        ok = [_agreement_at(*x, max_new, d)[1] for x in zip(preds, seqs, lens, strict=True)]
        out.append(sum(int(o.sum()) for o in ok) / max(sum(len(o) for o in ok), 1))
    return out


POSITION_BUCKET = 128  # tokens; the flagship trains on windows of 128


def first_draft_by_position(preds, seqs, lens, max_new: int) -> list[dict]:
    """Agreement at distance 1 (a round's first draft) by the frontier's position in the
    sequence, in buckets of POSITION_BUCKET tokens: whether a drafter keeps up past the window
    length it was trained on. [{"start", "agreement", "count"}] for each bucket that occurs."""
    pairs = [_agreement_at(*x, max_new, 0) for x in zip(preds, seqs, lens, strict=True)]
    bucket = np.concatenate([t for t, _ in pairs]) // POSITION_BUCKET
    counts = np.bincount(bucket)
    hits = np.bincount(bucket, weights=np.concatenate([ok for _, ok in pairs]))
    return [{"start": int(b) * POSITION_BUCKET, "agreement": float(hits[b] / counts[b]),
             "count": int(counts[b])} for b in np.flatnonzero(counts)]  # fmt: skip


TOP_KS = (1, 2, 4, 8)


def first_draft_top_k(ranks, lens, max_new: int) -> dict[int, float]:
    """How often the target's token is among the drafter's k likeliest draft ids at a round's
    first draft, for k in TOP_KS (k = 1: the greedy draft, agreement at d=1), over every
    frontier of the continuations: what a round that verified k first drafts side by side
    (a tree) would accept there."""
    first = np.concatenate(
        [_at_distance(rank, n, max_new, 0)[1] for rank, n in zip(ranks, lens, strict=True)]
    )
    return {k: float((first < k).mean()) for k in TOP_KS}


def markdown(out: dict) -> str:
    """Four tables: tau and acceptance by draft position per drafter and gamma (with tau per
    prompt class), agreement with the target by distance from the frontier, first-draft
    agreement by position in the sequence (with the number of rounds' frontiers) and how
    often the target's token is in the first draft's top k; and a fifth for prompt lookup and
    hybrid drafting when the spec has them."""
    kinds = kinds_of((p["kind"], p["text"]) for p in out["prompts"])
    g_max = max(out["gammas"])
    head = ["drafter", "gamma", "tau", *[f"tau {k}" for k in kinds]]
    head += ["acceptance by draft position", "rounds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in out["drafters"].items():
        label = f"{name} ({'Tandem' if row['tandem'] else 'independent'})"
        for g, by_kind in row["gammas"].items():
            cells = [label, str(g), f"{by_kind['all']['tau']:.2f}"]
            cells += [f"{by_kind[k]['tau']:.2f}" for k in kinds]
            cells += [" ".join(f"{a:.2f}" for a in by_kind["all"]["acceptance_by_pos"])]
            cells += [str(by_kind["all"]["rounds"])]
            lines.append("| " + " | ".join(cells) + " |")
    head = ["drafter", *[f"d={i + 1}" for i in range(g_max)]]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in out["drafters"].items():
        cells = [name, *[f"{a:.3f}" for a in row["agreement_by_distance"]]]
        lines.append("| " + " | ".join(cells) + " |")
    starts = sorted({b["start"] for row in out["drafters"].values()
                     for b in row["first_draft_by_position"]})  # fmt: skip
    head = ["drafter (d=1) at position", *[f"{s}-{s + POSITION_BUCKET - 1}" for s in starts]]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in out["drafters"].items():
        by_start = {b["start"]: b for b in row["first_draft_by_position"]}
        cells = [name] + [
            f"{by_start[s]['agreement']:.3f} ({by_start[s]['count']})" if s in by_start else "-"
            for s in starts
        ]
        lines.append("| " + " | ".join(cells) + " |")
    head = ["drafter (d=1): target in top k", *[f"k={k}" for k in TOP_KS]]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in out["drafters"].items():
        share = row["first_draft_top_k"]
        lines.append("| " + " | ".join([name, *[f"{share[k]:.3f}" for k in TOP_KS]]) + " |")
    if out.get("lookup"):
        head = ["with prompt lookup", "gamma", "tau", *[f"tau {k}" for k in kinds]]
        head += ["rounds by lookup", "rounds"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, gammas in out["lookup"].items():
            for g, by_kind in gammas.items():
                cells = [name, str(g), f"{by_kind['all']['tau']:.2f}"]
                cells += [f"{by_kind[k]['tau']:.2f}" for k in kinds]
                cells += [f"{by_kind['all']['lookup_share']:.0%}", str(by_kind["all"]["rounds"])]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
