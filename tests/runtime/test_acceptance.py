"""`tandemc run SPEC acceptance`: the greedy SPEED rounds replayed from teacher-forced passes
on the target's own text give the same rounds, tokens and accepted drafts by position as the
decode loop itself, for a Tandem drafter (whose drafts depend on each round's frontier) and
an independent one, at several gammas and with EOS stops; and the command prints its tables.

The models are tiny: briefly trained in one module-scoped run (so drafts are accepted often
enough to test the replay), and an untrained probe whose drafts depend on the frontier."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compiler.decode import loops
from compiler.decode.drafting import draft_head
from compiler.decode.programs import loop_config
from compiler.nn.decoder import decoder_forward
from runtime import acceptance, bench, run
from runtime.cli import main

SPEC = """
tandem: 1
name: tiny-acceptance
data: {corpus: stdlib, seq_len: 32}
tokenizer: {kind: byte}
models:
  large: {d_model: 32, n_layers: 2, n_heads: 2, tie_embeddings: false}
  small: {d_model: 16, n_layers: 2, n_heads: 2, tie_embeddings: false}
  drafter: {d_model: 16, n_layers: 1, n_heads: 2}
projections:
  l2s: {from: large, to: small}
wiring:
  - {query: small, memory: large, via: l2s, layers: "small[0:2] <- large[1:3]", block: 1,
     block_max: 3}
  - {kind: none, query: drafter}
train:
  - {name: large, trainable: [large], objective: {kind: ce, model: large}, steps: 60, batch: 8}
  - {name: small, trainable: [small, l2s], steps: 40, batch: 8,
     objective: {kind: distil, model: small, teacher: large}}
  - {name: drafter, trainable: [drafter], steps: 40, batch: 8,
     objective: {kind: distil, model: drafter, teacher: large}}
decode: {policy: speed, target: large, draft: small, gamma: 2, max_new_tokens: 24,
         backend: xla}
bench: {gammas: [1, 3], drafter: drafter, code_prompts: 2, repeats: 1}
shapes: {batch: 1, max_len: 160}
"""
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("acceptance")
    spec = folder / "tiny.yaml"
    spec.write_text(SPEC)
    r = run.open_run(spec, run_dir=folder / "run", log=lambda *a: None)
    run.train(r)
    return spec, r


def _decoded(r, params, draft: str, gamma: int, eos: int, prompts, **lookup) -> list[tuple]:
    """The decode loop itself, one prompt at a time (batch 1, as the bench runs) and one round
    at a time: per prompt its stats and each round's (frontier, drafts, accepted count).
    lookup: hybrid drafting's decode settings."""
    d = dataclasses.replace(r.prog.decode, draft=draft, gamma=gamma, eos_id=eos, **lookup)
    cfg = loop_config(r.prog, d)
    params = draft_head(cfg, params)
    prefill = jax.jit(functools.partial(loops.prefill, cfg))
    step = jax.jit(functools.partial(loops.speculative_step, cfg))
    out = []
    for text in prompts:
        tokens, lens = run.encode_prompts(r, [text], d)
        state = prefill(params, jnp.asarray(tokens), jnp.asarray(lens), KEY)
        rounds = []
        while not bool(state.done[0]):
            f, n = int(state.frontier[0]), int(state.n[0])
            state, drafts, _ = step(params, state)
            rounds.append((f, np.asarray(drafts.tokens[0]), int(state.n[0]) - n - 1))
        s = run.decode_stats([loops.finalize(cfg, state)], 1.0)
        out.append(((s["rounds"], s["round_tokens"], s["accepted_by_pos"]), rounds))
    return out


NEWLINE = ord("\n")
CASES = [  # (drafter, its weights, gamma, EOS id)
    ("small", "trained", 3, -1),
    ("small", "trained", 3, NEWLINE),
    ("drafter", "trained", 3, -1),
    ("drafter", "trained", 1, NEWLINE),
    ("small", "probe", 3, -1),
]


def _probe(spec, folder):
    """Untrained weights (the untied large model writes varied text) and a Tandem model with
    zero token embeddings: its attention is uniform over what it may read, so its drafts hang
    on how much of M_L's memory the round's frontier shows it."""
    r = run.open_run(spec, run_dir=folder / "probe", log=lambda *a: None)
    params = run.initial_params(r)
    small = params["small"]
    tokens = small["embed"]["tokens"]
    r.params = {**params, "small": {**small, "embed": {**small["embed"], "tokens": 0 * tokens}}}
    return r


def test_replay_equals_the_decode_loop(trained, tmp_path):
    """Tau, rounds and accepted drafts by position replayed from teacher-forced drafts equal
    the loop's; so do the drafts themselves, up to a round's first rejected one (after it the
    loop drafts from its own tokens). The trained models get drafts accepted often; the probe
    checks that each round reads the frontier's row."""
    spec, trained_run = trained
    runs = {"trained": trained_run, "probe": _probe(spec, tmp_path)}
    accepted = checked = frontier_bound = 0
    for draft, which, gamma, eos in CASES:
        r = runs[which]
        d = r.prog.decode
        prompts = [p for _, p in bench.bench_prompts(r, dataclasses.replace(d, gamma=4))]
        tokens, lens = run.encode_prompts(r, prompts, d)
        seqs = acceptance.continuations(r, d, tokens, lens, 3)
        preds, _ = acceptance.drafts_and_ranks(r.prog, draft, run.trained_params(r), seqs, 3, 0)
        assert preds[0].shape[0] == (3 if draft == "small" else 1)
        loop = _decoded(r, run.trained_params(r), draft, gamma, eos, prompts)
        for i, (pred, seq, n) in enumerate(zip(preds, seqs, lens, strict=True)):
            stats, rounds = loop[i]
            x = acceptance.replay(pred, seq, int(n), d.max_new_tokens, gamma, eos)
            assert (x["rounds"], x["round_tokens"], x["accepted_by_pos"].tolist()) == stats
            for f, drafts, k in rounds:
                want = acceptance.round_drafts(pred, f, min(k + 1, gamma))
                assert drafts[: len(want)].tolist() == want.tolist(), (draft, which, gamma, i, f)
                checked += len(want)
                frontier_bound += int((pred[:, f] != pred[f % len(pred), f]).any())
            accepted += sum(stats[2])
    assert accepted > 50 and checked > 120  # accepted often enough for the replay to matter
    assert frontier_bound > 5  # first drafts that another frontier would have changed


HYBRID = [  # (drafter, gamma, decode settings): lookup after a full / shorter match, longer rounds
    ("small", 3, {"lookup": 3}),
    ("drafter", 2, {"lookup": 3, "lookup_min": 1, "lookup_gamma": 4}),
    ("small", 2, {"lookup": 2, "lookup_min": 1, "lookup_gamma": 3}),
]


@pytest.mark.parametrize("which", ["trained", "probe"])
def test_hybrid_replay_equals_the_decode_loop(trained, tmp_path, which):
    """Hybrid rounds replayed (the decode's lookup at each frontier, the model's teacher-forced
    drafts elsewhere) give the loop's rounds, tokens, accepted drafts by position and rounds
    drafted by lookup; and prompt lookup alone replays as the ngram drafter's loop. The
    trained target repeats itself (mostly lookup rounds), the probe's writes varied text."""
    spec, r = trained
    if which == "probe":
        r = _probe(spec, tmp_path)
    d, params = r.prog.decode, run.trained_params(r)
    prompts = [p for _, p in bench.bench_prompts(r, dataclasses.replace(d, gamma=4))]
    tokens, lens = run.encode_prompts(r, prompts, d)
    seqs = acceptance.continuations(r, d, tokens, lens, 4)
    by_lookup = by_model = 0
    for draft, gamma, settings in HYBRID:
        preds, _ = acceptance.drafts_and_ranks(r.prog, draft, params, seqs, 3, 0)
        n, lg = settings["lookup"], settings.get("lookup_gamma", 0)
        tables = acceptance.lookup_tables(seqs, n, max(lg, gamma))
        least = settings.get("lookup_min", 0) or n
        loop = _decoded(r, params, draft, gamma, -1, prompts, **settings)
        for i, (pred, seq, p_len) in enumerate(zip(preds, seqs, lens, strict=True)):
            look = acceptance.Lookup(*tables[i], least, lg or gamma)
            x = acceptance.replay(pred, seq, int(p_len), d.max_new_tokens, gamma, -1, look)
            assert (x["rounds"], x["round_tokens"], x["accepted_by_pos"].tolist()) == loop[i][0]
            by_lookup += x["lookup_rounds"]
            by_model += x["rounds"] - x["lookup_rounds"]
    assert by_lookup > 10 and by_model > (10 if which == "probe" else 0)  # both kinds
    ngram = dataclasses.replace(d, draft=None, draft_ngram=3, gamma=3)
    cfg = loop_config(r.prog, ngram)
    tables = acceptance.lookup_tables(seqs, 3, 3)
    for i, text in enumerate(prompts):
        toks, n = run.encode_prompts(r, [text], ngram)
        res = loops.generate(
            cfg, {"large": params["large"]}, jnp.asarray(toks), jnp.asarray(n), KEY
        )
        s = run.decode_stats([res], 1.0)
        x = acceptance.replay(None, seqs[i], int(lens[i]), d.max_new_tokens, 3, -1,
                              acceptance.Lookup(*tables[i], 1, 3))  # fmt: skip
        assert (x["rounds"], x["round_tokens"]) == (s["rounds"], s["round_tokens"])


def test_the_command_prints_both_tables(trained, capsys, tmp_path):
    spec, r = trained
    out_json = tmp_path / "out.json"
    argv = ["run", str(spec), "acceptance", "--run-dir", str(r.run_dir), "--json", str(out_json)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| drafter | gamma | tau | tau code |" in text
    assert "| drafter | d=1 | d=2 | d=3 |" in text
    got = json.loads(out_json.read_text())["acceptance"]
    small = got["drafters"]["small"]
    assert small["tandem"] and not got["drafters"]["drafter"]["tandem"]
    assert set(small["gammas"]) == {"1", "3"}
    for by_kind in small["gammas"].values():
        assert by_kind["all"]["tau"] >= 1 and by_kind["all"]["rounds"] > 0
    assert all(0 <= a <= 1 for a in small["agreement_by_distance"])
    assert "| drafter (d=1) at position | 0-127 |" in text
    buckets = small["first_draft_by_position"]
    rounds = sum(b["count"] for b in buckets)
    by_position = sum(b["agreement"] * b["count"] for b in buckets) / rounds
    assert by_position == pytest.approx(small["agreement_by_distance"][0])
    assert "| drafter (d=1): target in top k | k=1 | k=2 | k=4 | k=8 |" in text
    top = [small["first_draft_top_k"][str(k)] for k in acceptance.TOP_KS]
    assert top[0] == pytest.approx(small["agreement_by_distance"][0])
    assert top == sorted(top) and top[-1] <= 1
    # the bench's prompt_lookup (3): prompt lookup alone and each drafter's hybrid rows
    assert "| with prompt lookup | gamma | tau |" in text
    assert set(got["lookup"]) == {
        "prompt lookup n=3",
        "small + lookup n=3 from 3",
        "drafter + lookup n=3 from 3",
    }
    hybrid = got["lookup"]["small + lookup n=3 from 3"]["3"]["all"]
    assert 0 < hybrid["lookup_share"] <= 1 and hybrid["tau"] >= 1


def test_first_draft_by_position_buckets_the_frontier():
    """A drafter right up to position 127 and wrong after: the buckets tell the two apart."""
    seq = np.arange(1, 301, dtype=np.int32)
    pred = (seq + 1)[None].copy()  # the draft after position t is seq[t + 1]
    pred[0, 128:] = 0
    got = acceptance.first_draft_by_position([pred], [seq], [100], 150)
    assert got == [
        {"start": 0, "agreement": 1.0, "count": 29},  # frontiers 99..127
        {"start": 128, "agreement": 0.0, "count": 121},  # frontiers 128..248
    ]


def test_ranks_order_the_next_token_among_the_draft_ids(trained):
    """A rank is 0 exactly where the greedy draft is the next token, the number of draft ids
    where that token is not one, and otherwise its place in the drafter's logits sorted
    high to low (ties by id, as argmax breaks them)."""
    spec, r = trained
    d, params = r.prog.decode, run.trained_params(r)
    prompts = [p for _, p in bench.bench_prompts(r, dataclasses.replace(d, gamma=4))]
    tokens, lens = run.encode_prompts(r, prompts, d)
    seqs = acceptance.continuations(r, d, tokens, lens, 3)
    v = 110  # byte ids: leaves out "n".."z", so some next tokens are not draft ids
    for draft in ("small", "drafter"):
        preds, ranks = acceptance.drafts_and_ranks(r.prog, draft, params, seqs, 3, v)
        for pred, rank, seq in zip(preds, ranks, seqs, strict=True):
            nxt = seq[1:]
            assert ((rank[:, :-1] == 0) == (pred[:, :-1] == nxt)).all()
            assert (rank[:, :-1][:, nxt >= v] == v).all() and (nxt >= v).any()
    seq = seqs[0]
    logits = decoder_forward(params["drafter"], r.prog.model("drafter"), jnp.asarray(seq[None]))
    order = np.argsort(-np.asarray(logits[0][0, :, :v]), axis=-1, kind="stable")
    want = [int(np.flatnonzero(order[t] == seq[t + 1])[0]) if seq[t + 1] < v else v
            for t in range(len(seq) - 1)]  # fmt: skip
    assert ranks[0][0, :-1].tolist() == want


def test_first_draft_top_k_reads_each_rounds_row():
    """A Tandem drafter's rank at a round's first draft comes from the row of that round's
    frontier (t mod R), over the frontiers from the prompt's end."""
    ranks = np.array([[0, 9, 0, 9, 0, 9], [9, 1, 9, 5, 9, 7]])  # row t % 2 is read at t
    got = acceptance.first_draft_top_k([ranks], [2], 4)  # frontiers 1..4
    assert got == {1: 0.5, 2: 0.75, 4: 0.75, 8: 1.0}  # ranks 1, 0, 5, 0
