"""`tandemc run`: what a spec's sections ask for, callable from Python with the same names.

from runtime import run
r = run.open_run("specs/quickstart.yaml")
run.train(r)                            # every train stage (completed ones are skipped)
out = run.generate(r, ["def main("])    # texts, tokens and statistics
table = run.compare(r, ["def main("])   # autoregressive vs the spec's policy
model = run.nnx_module(r, "large")      # a flax.nnx Module; run.use_params hands weights back
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import numbers
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from compiler import nn
from compiler.build import build_ir
from compiler.decode.backend import Backend
from compiler.decode.backend import choose as choose_backend
from compiler.decode.backend import prepare as prepare_params
from compiler.errors import InputError
from compiler.ir import DecodeIR, ProgramIR
from compiler.router import ROUTER
from compiler.sharded_programs import generate_program
from compiler.sharding import Sharder, maybe_initialize_distributed, rules_of
from compiler.timing import timed_call, timings
from tandem_dsl import api
from tandem_dsl.diagnostics import Collector
from tandem_dsl.source import path_str

from . import checkpoint
from .errors import UserError, at_field
from .memory_budget import check_fits
from .stage_config import differences, stage_config, upgrade
from .tokenizer import prompt_ids
from .train import StageResult, train_stage


@dataclass
class Run:
    spec: object
    doc: object  # the resolved spec document: where each value came from
    prog: ProgramIR
    run_dir: Path
    tokenizer: object
    log: object = print  # log(str): progress and tables go here
    params: dict | None = None
    sharded: tuple | None = None  # (params, the same params on the spec's mesh)
    packed: tuple | None = None  # (mesh params, {(model, head rows): packed model})


def open_run(
    spec,
    overrides=(),
    run_dir: str | Path | None = None,
    log=print,
    distributed: bool | None = None,
) -> Run:
    """Loads and checks a spec (SpecError on bad input) and prepares its run directory.

    spec: a spec file, a typed spec (`tandem_dsl.api.load`) or a
    `tandem_dsl.builder.SpecBuilder`; an object goes through the same checks as a file
    (`tandem_dsl.api.checked`), and the run directory reuses a finished stage only when its
    recorded settings match, whichever form the spec came in. Errors about an object's values
    name the field path (it has no file and line; a builder's name its Python line).
    distributed: call `jax.distributed.initialize()` first (multi-host; default: when the
    environment variable TANDEM_DISTRIBUTED is 1)."""
    if distributed is None:
        distributed = os.environ.get("TANDEM_DISTRIBUTED", "") == "1"
    try:
        maybe_initialize_distributed(distributed)
    except InputError as e:
        raise UserError(str(e)) from None
    loaded = api.checked(spec, overrides)
    spec = loaded.spec
    prog = build_ir(spec)
    try:
        Sharder.for_run(prog)  # an impossible mesh fails here, before any work
    except ValueError as e:
        raise UserError(str(e)) from None
    run_dir = Path(run_dir) if run_dir else Path("runs") / spec.name
    _not_a_file(run_dir)
    with located(loaded.doc):
        check_fits(prog, train=False)
        with at_field(("tokenizer",), values=True):
            tokenizer = _tokenizer(spec, run_dir, log)
    return Run(spec, loaded.doc, prog, run_dir, tokenizer, log)


@contextlib.contextmanager
def located(doc):
    """A UserError caused by one spec value becomes a diagnostic at that value (file, line,
    column, the spec path and the hint)."""
    try:
        yield
    except UserError as e:
        if e.field is None:
            raise
        errors = Collector("run")
        errors.error("E-RUN", str(e), doc.origin(e.field), path_str(e.field), e.hint)
        errors.raise_if_any()


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Held while a process trains in run_dir; a second one is refused at once. The lock
    (flock) ends with the process, even a killed one. Each process of a multi-host run
    holds its own (`.lock.<process index>` after the first)."""
    if not run_dir.exists():
        yield
        return
    index = jax.process_index()
    with open(run_dir / (f".lock.{index}" if index else ".lock"), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise UserError(
                f"run directory {run_dir} is in use by another process (pid {holder})",
                hint="wait for it to finish, or use another --run-dir",
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _not_a_file(folder: Path, what: str = "run directory", flag: str = "--run-dir") -> None:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file", hint=f"pass a folder with {flag}")


def ensure_writable(folder: Path, what: str = "run directory", flag: str = "--run-dir") -> None:
    """Before work that writes into a folder (the run directory, compile's --out): it is (or
    can be made) a writable folder, so no finished work is lost to a write error at its end."""
    _not_a_file(folder, what, flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(
            f"cannot write into the {what} {folder} ({e.strerror or e})",
            hint=f"pass a writable folder with {flag}",
        ) from None


def _tokenizer(spec, run_dir: Path, log):
    """The spec's tokenizer; a BPE one is trained once on the training documents and saved
    as `<run dir>/tokenizer.json`, beside the checkpoints that depend on it."""
    from .tokenizer import make_tokenizer

    t = spec.tokenizer
    if t.kind in ("gguf", "hf-json"):  # with BOS/EOS ids and the chat template
        from .weights import load_tokenizer

        return load_tokenizer(t.kind, t.path)
    if t.kind != "bpe":
        return make_tokenizer(t.kind, t.vocab_size, t.path)
    saved = Path(t.path) if t.path else run_dir / "tokenizer.json"
    if saved.exists():
        return make_tokenizer("bpe", t.vocab_size, saved)
    from .corpus import SpecData
    from .data import iter_texts

    log(f"training a BPE tokenizer (vocab {t.vocab_size}) on the training documents")
    docs = SpecData(spec, None).train_docs
    tok = make_tokenizer("bpe", t.vocab_size, texts=iter_texts(docs, max_bytes=5_000_000))
    tok.save(saved.parent)
    return tok


# --- parameters ------------------------------------------------------------------------


def initial_params(r: Run) -> dict:
    """Random init, then every model whose spec says `init: {from: checkpoint | gguf |
    safetensors}` loaded."""
    imported = {n for n, m in r.spec.models.items() if m.init.from_ in ("gguf", "safetensors")}
    # imported models are not drawn first (135M normals take longer than reading the file);
    # every other part's values depend only on its own name, so they are unchanged
    models = tuple(m for m in r.prog.models if m.name not in imported)
    params = nn.init_params(dataclasses.replace(r.prog, models=models), jax.random.PRNGKey(0))
    for name, m in r.spec.models.items():
        source = m.init.from_
        if source == "random":
            if m.init.seed:
                params[name] = nn.init_model(r.prog, name, m.init.seed)
        elif source == "checkpoint":
            with at_field(("models", name, "init", "path")):
                params[name] = _model_from_stage(Path(m.init.path), name, params[name])
        elif source in ("gguf", "safetensors"):
            from .weights import load_weights

            with at_field(("models", name, "init", "path"), values=True):
                params[name] = load_weights(source, m.init.path, r.prog.model(name))
        else:
            raise UserError(
                f"model '{name}': init from {source} is not supported by `tandemc run` yet"
            )
    for name, m in r.spec.models.items():
        if m.init.embed_from:
            params[name] = _start_from(params[name], params[m.init.embed_from], m.init)
    return params


def _start_from(own: dict, source: dict, init) -> dict:
    """`init.embed_from` (the token table, reduced to this width) and `init.copy_layers`
    (those source layers as layers 0, 1, ..., and the source's final norm)."""
    tokens = own["embed"]["tokens"]
    table = nn.reduced_embedding(np.asarray(source["embed"]["tokens"]), tokens.shape[1])
    own = dict(own, embed=dict(own["embed"], tokens=jnp.asarray(table, tokens.dtype)))
    copied = {f"layers_{j}": source[f"layers_{layer}"] for j, layer in enumerate(init.copy_layers)}
    if copied:
        copied["final_norm"] = source["final_norm"]
    return own | jax.tree.map(lambda a: jnp.asarray(a, tokens.dtype), copied)


def _check_trained(r: Run, index: int, info: dict) -> None:
    """A finished stage decodes only if it was trained with the spec's current settings."""
    stage = r.prog.train[index]
    recorded, config = info.get("config"), stage_config(r.spec, r.prog, index)
    if recorded is None:
        r.log(f"warning: stage '{stage.name}' records no config (an older tandem-dsl wrote it)")
    changes = [] if recorded is None else differences(upgrade(recorded), config)
    if info["steps"] != stage.steps:
        changes.append(f"steps: {info['steps']} -> {stage.steps}")
    if changes:
        listed = "\n  ".join(changes[:12])
        raise UserError(
            f"stage '{stage.name}' in {r.run_dir / stage.name} was trained with other "
            f"settings:\n  {listed}",
            field=("train", index),
            hint="run `tandemc run SPEC train` first (it says what it can continue and what "
            "must be retrained)",
        )


def _model_from_stage(stage_dir: Path, name: str, template) -> dict:
    info = checkpoint.finished(stage_dir)
    if info is None:
        raise UserError(
            f"model '{name}' loads from {stage_dir}, but that stage has not finished "
            f"(no {stage_dir / 'final.json'})",
            field=("models", name, "init", "path"),
            hint="train it first (tandemc run SPEC train with the spec that trains it)",
        )
    ckpt = stage_dir / info["checkpoint"]
    arrays = checkpoint.load_subtree(ckpt, name, template)
    if arrays is None:
        raise UserError(f"checkpoint {ckpt} holds no parameters for model '{name}'")
    return arrays


def trained_params(r: Run, require: bool = False) -> dict:
    """Initial params updated by every completed stage, in order. Warns on random weights."""
    if r.params is not None:
        return r.params
    params = initial_params(r)
    done = 0
    for i, stage in enumerate(r.prog.train):
        stage_dir = r.run_dir / stage.name
        with at_field(("train", i)):
            info = checkpoint.finished(stage_dir)
            if info is None:
                continue
            _check_trained(r, i, info)
            ckpt = stage_dir / info["checkpoint"]
            for name in stage.trainable:
                params[name] = checkpoint.load_subtree(ckpt, name, params[name])
        done += 1
    if done < len(r.prog.train):
        msg = f"{len(r.prog.train) - done} of {len(r.prog.train)} train stages not run"
        if require:
            raise UserError(f"{msg}; run `tandemc run SPEC train` first")
        r.log(f"warning: {msg}: decoding with partly random weights")
    r.params = params
    return params


def nnx_module(r: Run, name: str, trained: bool = True, mesh=None):
    """Model `name` as a `flax.nnx` Module (`compiler.nnx_module.DecoderModule`) holding the
    run's weights: those of every completed stage (`trained_params`), or with trained=False
    its initial ones (`init`: random, checkpoint or weight files). Its Params carry their
    logical axes and the spec's sharding rules; mesh: place them on that mesh."""
    from compiler.nnx_module import DecoderModule, standalone_model

    try:
        cfg = standalone_model(r.prog, name)
    except InputError as e:
        raise UserError(str(e)) from None
    params = trained_params(r) if trained else initial_params(r)
    return DecoderModule(cfg, params[name], rules=rules_of(r.prog.mesh), mesh=mesh)


def use_params(r: Run, name: str, params: dict) -> None:
    """Model `name`'s weights (a functional tree, e.g. `DecoderModule.to_params()`, checked
    against the model) replace the run's in memory: `generate`, `compare` and
    `evaluate_stages` decode with them from now on. Nothing is written: the run directory's
    checkpoints stay those of its stages (`train` starts from them, not from these)."""
    from compiler.nnx_module import check_params

    names = [m.name for m in r.prog.models]
    if name not in names:
        raise UserError(f"no model '{name}' in spec '{r.spec.name}' (models: {', '.join(names)})")
    try:
        check_params(r.prog.model(name), params)
    except InputError as e:
        raise UserError(str(e)) from None
    r.params = {**trained_params(r), name: params}


# --- training ----------------------------------------------------------------------------


def train(r: Run, progress=None, stop_after_steps: int | None = None) -> list[StageResult]:
    """Every train stage in order (the run-directory rules: `runtime.train`). One process at
    a time trains in a run directory (a lock held while it runs)."""
    # only whether each stage has its final.json: a damaged one is reported, located, when
    # its stage is reached (checkpoint.finished)
    unfinished = any(not (r.run_dir / s.name / "final.json").exists() for s in r.prog.train)
    if unfinished:
        check_fits(r.prog, train=True, generated=r.spec.data.generated)
        ensure_writable(r.run_dir)
    with run_lock(r.run_dir):
        return _train(r, progress, stop_after_steps, unfinished)


def _train(r: Run, progress, stop_after_steps, unfinished) -> list[StageResult]:
    from .corpus import data_for_spec, program_for_data
    from .selfgen import generated_documents

    params = initial_params(r)
    generated = generated_documents(r, params, r.log) if unfinished else []
    data = data_for_spec(r.spec, r.tokenizer, generated)
    prog = program_for_data(r.prog, data)  # chat data: the loss counts the replies only
    results = []
    for i, stage in enumerate(prog.train):
        with at_field(("train", i)):  # its settings changed, its loss diverged, ...
            result = train_stage(
                prog,
                stage,
                params,
                r.run_dir / stage.name,
                _train_batches(r, stage, i, params, data),
                lambda s=stage, i=i: data.validation(
                    s.seq_len, s.batch, s.eval_batches, field=("train", i, "batch")
                ),
                progress=progress(stage) if progress else None,
                stop_after_steps=stop_after_steps,
                meta={"spec": api.to_yaml(r.spec)},
                config=stage_config(r.spec, r.prog, i),
                log=r.log,
            )
        results.append(result)
        params = result.params
        if result.steps < stage.steps:
            break
    complete = len(results) == len(r.prog.train) and results[-1].steps == r.prog.train[-1].steps
    r.params = params if complete else None
    return results


def _train_batches(r: Run, stage, i: int, params: dict, data):
    """train_batches(position) for `train_stage`: the data stream, or with a teacher cache the
    stored batches (the store is filled when the stage first asks for them)."""
    field = ("train", i)
    if stage.teacher_cache is None:  # each process reads only the rows its devices hold
        rows = Sharder.for_run(r.prog).local_batch_rows(stage.batch)
        return lambda position: data.train(
            stage.seq_len, stage.batch, stage.seed, position, field, rows=rows
        )

    def stored(position):
        from .teacher_cache import StoredBatches, open_store

        store = open_store(r.run_dir, r.prog, stage, params, data, field, r.log)
        return StoredBatches(store, stage.teacher_cache.batches, stage.seed, position)

    return stored


def evaluate_stages(r: Run) -> dict:
    """Each stage's objective on the validation split, with the trained parameters."""
    from compiler.sharded_programs import train_step_program
    from compiler.train import init_train_state

    from .corpus import data_for_spec, program_for_data
    from .train import evaluate

    data = data_for_spec(r.spec, r.tokenizer)
    params = trained_params(r, require=True)
    sh = Sharder.for_run(r.prog)
    prog = program_for_data(r.prog, data)
    out = {}
    for i, stage in enumerate(prog.train):
        state = init_train_state(prog, stage, params)
        _, eval_step, state_sh, batch_sh = train_step_program(prog, stage, sh, state)
        batches = data.validation(
            stage.seq_len, stage.batch, stage.eval_batches, field=("train", i, "batch")
        )
        batches = [sh.put(b, batch_sh) for b in batches]
        out[stage.name] = evaluate(eval_step, sh.put(state, state_sh), batches)
    return out


# --- generation ----------------------------------------------------------------------------


@dataclass
class Generation:
    texts: list[str]
    tokens: list[list[int]]
    # timed: the fastest of the timed calls (compile excluded); else the one call's wall
    # time, compile included (stats' tokens_per_s likewise)
    seconds: float
    stats: dict = field(default_factory=dict)  # totals over the batch
    timed: bool = False


def encode_prompts(r: Run, prompts: list[str], decode: DecodeIR) -> tuple[np.ndarray, np.ndarray]:
    budget = decode.prompt_budget(r.prog.max_len)
    rows = []
    for i, text in enumerate(prompts):
        ids = prompt_ids(r.tokenizer, text)
        if not ids:
            raise UserError(f"prompt {i + 1} is empty: give some text to continue")
        if len(ids) > budget:
            raise UserError(
                f"prompt {i + 1} has {len(ids)} tokens; with max_new_tokens "
                f"{decode.max_new_tokens} and shapes.max_len {r.prog.max_len} at most {budget} fit "
                "(raise shapes.max_len or shorten the prompt)"
            )
        rows.append(ids)
    width = max(len(x) for x in rows)
    width = -(-width // 32) * 32  # pad to a multiple of 32: fewer distinct compiled shapes
    out = np.zeros((len(rows), width), np.int32)
    for i, ids in enumerate(rows):
        out[i, : len(ids)] = ids
    return out, np.array([len(x) for x in rows], np.int32)


def _sharded_params(r: Run) -> dict:
    """The trained params placed once on the spec's mesh (the large model's weights over
    `model` per the sharding rules)."""
    params = trained_params(r)
    if r.sharded is None or r.sharded[0] is not params:
        sh = Sharder.for_run(r.prog)
        r.sharded = (params, sh.put(params, sh.params(params)))
    return r.sharded[1]


def decode_params(r: Run, decode: DecodeIR) -> tuple[dict, Backend]:
    """The params a decode reads, and its mat-mul backend (`decode.backend`): the trained
    params on the spec's mesh, the target's and draft's matrices packed (once per run and
    model) when the backend is the CPU kernel."""
    params = _sharded_params(r)
    try:
        backend = choose_backend(decode.backend, Sharder.for_run(r.prog).n_devices)
    except ValueError as e:
        raise UserError(str(e)) from None
    if r.packed is None or r.packed[0] is not params:
        r.packed = (params, {})
    return prepare_params(params, r.prog, decode, backend, r.packed[1]), backend


def generate(
    r: Run,
    prompts: list[str],
    decode: DecodeIR | None = None,
    repeats: int | None = None,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Generation:
    """Generates for every prompt (one batch) with `decode` (default: the spec's policy).

    repeats: None runs the generation once (compile included in `seconds`); a number times
    it: one untimed warm-up call, then `repeats` timed calls, the fastest reported.
    temperature, top_k, top_p, seed: this call's sampling, each overriding the decode
    section's `sampling` value (the spec's decode is not changed)."""
    decode = decode or r.prog.decode
    if decode is None:
        raise UserError("the spec has no decode section: add one to generate")
    if repeats is not None and (not _whole(repeats) or repeats < 1):
        raise UserError(f"repeats={repeats!r}: give a whole number >= 1, or None (no timing)")
    decode = with_sampling(decode, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    decode = with_eos(r, decode)
    params, backend = decode_params(r, decode)
    tokens, lens = encode_prompts(r, prompts, decode)
    from .stop_rule import spec_stop_rule

    rule, router = spec_stop_rule(r, decode, params, len(prompts), tokens.shape[1])
    if router is not None:
        params = {**params, ROUTER: router}
    sh = Sharder.for_run(r.prog)
    # the seed only makes the key: every seed shares one compiled program
    program = dataclasses.replace(decode, sampling=dataclasses.replace(decode.sampling, seed=0))
    fn = generate_program(r.prog, program, sh, batch=len(prompts), stop_rule=rule,
                          packed=backend.packed)  # fmt: skip
    key = jax.random.PRNGKey(decode.sampling.seed)
    args = (params, jnp.asarray(tokens), jnp.asarray(lens), key)
    if repeats is None:
        result, seconds = timed_call(fn, *args)
    else:
        result, times = timings(fn, *args, repeats=repeats)
        seconds = min(times)
    out_tokens = token_rows(result)
    texts = [r.tokenizer.decode(t) for t in out_tokens]
    stats = {**decode_stats([result], seconds), "backend": str(backend)}
    return Generation(texts, out_tokens, seconds, stats, timed=repeats is not None)


MAX_SEED = 2**32 - 1  # jax.random.PRNGKey keeps 32 bits: a larger seed repeats a smaller one


def _whole(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def with_sampling(
    decode: DecodeIR,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> DecodeIR:
    """`decode` with the given sampling values in place of its own (None keeps one); a
    UserError names a value out of range. temperature 0 is greedy."""
    problems = []
    if temperature is not None and not (_real(temperature) and temperature >= 0):
        problems.append(f"temperature={temperature!r}: give a number >= 0 (0 = greedy)")
    if top_k is not None and not (_whole(top_k) and top_k >= 0):
        problems.append(f"top_k={top_k!r}: give a whole number >= 0 (0 = off)")
    if top_p is not None and not (_real(top_p) and 0 < top_p <= 1):
        problems.append(f"top_p={top_p!r}: give a number in (0, 1] (1 = off)")
    if seed is not None and not (_whole(seed) and 0 <= seed <= MAX_SEED):
        problems.append(f"seed={seed!r}: give a whole number in [0, {MAX_SEED}]")
    if problems:
        raise UserError("sampling: " + "; ".join(problems))
    given = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
    casts = {"temperature": float, "top_k": int, "top_p": float, "seed": int}
    changes = {k: casts[k](v) for k, v in given.items() if v is not None}
    if not changes:
        return decode
    return dataclasses.replace(decode, sampling=dataclasses.replace(decode.sampling, **changes))


def token_rows(result) -> list[list[int]]:
    """A GenerateResult's generated tokens, one list per row (up to its length)."""
    toks, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
    return [toks[i, : lengths[i]].tolist() for i in range(len(lengths))]


def decode_stats(results: list, seconds: float) -> dict:
    """Totals and rates over GenerateResults that took `seconds` together: tokens, M_L / M_S
    calls (and per token), rounds, tau (tokens per round, counting the bonus token; 0 without
    rounds), drafts per round, accepted / drafted counts by draft position, tokens/s."""
    stats = [jax.device_get(res.stats) for res in results]

    def total(field):
        return sum(np.asarray(getattr(s, field)).sum(0) for s in stats)

    tokens = sum(int(np.asarray(res.lengths).sum()) for res in results)
    large, small, rounds, round_tokens = (
        int(total(f)) for f in ("large_calls", "small_calls", "rounds", "round_tokens")
    )
    drafted = total("drafted_by_pos")
    lookup_rounds = int(total("lookup_rounds"))
    return {
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "large_calls": large,
        "small_calls": small,
        "large_calls_per_token": large / max(tokens, 1),
        "small_calls_per_token": small / max(tokens, 1),
        "rounds": rounds,
        "round_tokens": round_tokens,
        "tau": round_tokens / max(rounds, 1),
        "drafts_per_round": float(drafted.sum()) / max(rounds, 1),
        "lookup_rounds": lookup_rounds,  # hybrid drafting: rounds drafted by prompt lookup
        "accepted_by_pos": total("accepted_by_pos").tolist(),
        "drafted_by_pos": drafted.tolist(),
    }


def with_eos(r: Run, decode: DecodeIR) -> DecodeIR:
    """Rows stop at the tokenizer's end-of-sequence token when the spec says so."""
    eos = getattr(r.tokenizer, "eos_id", -1)
    return dataclasses.replace(decode, eos_id=eos if r.spec.decode.stop_at_eos else -1)


def autoregressive(d: DecodeIR) -> DecodeIR:
    """The same decode section with the target generating alone (the baseline)."""
    return dataclasses.replace(
        d, policy="autoregressive", draft=None, draft_ngram=0, lookup=0, adaptive=None
    )


def compare(r: Run, prompts: list[str], repeats: int = 3) -> dict:
    """Autoregressive decoding of the target vs the spec's policy: same prompts, one process,
    each timed (`generate` with `repeats`)."""
    if repeats is None:
        raise UserError("compare times both decodings: give repeats >= 1")
    d = r.prog.decode
    base = generate(r, prompts, autoregressive(d), repeats)
    ours = generate(r, prompts, d, repeats)
    return {
        "policy": d.policy,
        "gamma": d.gamma,
        "identical": base.tokens == ours.tokens,
        "speedup": base.seconds / ours.seconds,
        "baseline": {"seconds": base.seconds, **base.stats},
        "ours": {"seconds": ours.seconds, **ours.stats},
        "text": ours.texts,
        "baseline_text": base.texts,
    }
