"""`data.generated`: a model's own greedy continuations as training text for drafters.

A drafter is judged on the text the target writes at decode time, so it learns most from that
text (self-distillation). The prompts come from the training split only: code up to a `def`
line (the target writes the body) and chat requests built from documented functions, wrapped in
the tokenizer's chat template. The target generates with its initial weights, greedily, `batch`
prompts at a time; each batch is written as one pre-tokenized document
(`<run dir>/generated/<key>/<batch>.ids`, prompts and continuations, rows separated by EOS), so an
interrupted generation resumes at the first missing batch. The key hashes everything the text
depends on (these settings, the model's spec and weight file, the tokenizer, the corpus split):
change any of them and the text is generated afresh in a new folder, never reused.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .data import TOKEN_IDS, document_keys
from .errors import UserError
from .prompts import chat_prompt, code_before_def
from .tokenizer import prompt_ids


def generated_documents(r, params: dict, log=print) -> list[Path]:
    """The `.ids` documents of `data.generated` (generated now where missing, by the model
    with these params: the run's initial ones), or []."""
    g = r.spec.data.generated
    if g is None:
        return []
    from .corpus import SpecData

    train_docs = SpecData(r.spec, r.tokenizer).train_docs
    folder = r.run_dir / "generated" / _key(r, train_docs)
    n_batches = -(-(g.code_prompts + g.chat_prompts) // g.batch)
    paths = [folder / f"{k:05d}{TOKEN_IDS}" for k in range(n_batches)]
    missing = [k for k, p in enumerate(paths) if not p.exists()]
    if missing:
        _generate(r, params, train_docs, folder, paths, missing, log)
    return paths


def _key(r, train_docs: list[Path]) -> str:
    g = r.spec.data.generated
    model = r.spec.models[g.model]
    weights = Path(model.init.path) if model.init.path else None
    stamp = None
    if weights is not None and weights.is_file():
        st = weights.stat()
        stamp = [st.st_size, st.st_mtime_ns]
    settings = {
        "generated": {k: v for k, v in dataclasses.asdict(g).items() if k != "share"},
        "model": _set_fields(model),
        "weights": stamp,
        "tokenizer": [r.tokenizer.name, r.tokenizer.vocab_size],
        "docs": document_keys(train_docs),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _set_fields(value):
    """A spec dataclass as the fields it sets away from their defaults (nested ones too): a
    field added to the spec language later, at its default, leaves cached data valid."""
    if not dataclasses.is_dataclass(value):
        return value
    out = {}
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default
        if v != default:
            out[f.name] = _set_fields(v)
    return out


def _generate(r, params, train_docs, folder: Path, paths, missing: list[int], log) -> None:
    g = r.spec.data.generated
    prompts = build_prompts(r, train_docs)
    total = len(prompts) * g.new_tokens
    log(
        f"data.generated: {len(prompts)} prompts x {g.new_tokens} tokens (<= {total} tokens) "
        f"from '{g.model}', greedy, batch {g.batch}, into {folder}; "
        f"{len(paths) - len(missing)} of {len(paths)} batches already there"
    )
    folder.mkdir(parents=True, exist_ok=True)
    fn, params, width = _program(r, params)
    eos = getattr(r.tokenizer, "eos_id", -1)
    start = time.perf_counter()
    for done, k in enumerate(missing, 1):
        rows = prompts[k * g.batch : (k + 1) * g.batch]
        ids = [prompt_ids(r.tokenizer, p) for p in rows]
        tokens = np.zeros((g.batch, width), np.int32)
        lens = np.ones((g.batch,), np.int32)  # rows past the prompts: one token, discarded
        for i, x in enumerate(ids):
            tokens[i, : len(x)], lens[i] = x, len(x)
        res = jax.device_get(fn(params, jnp.asarray(tokens), jnp.asarray(lens), _KEY))
        out = []
        for i, x in enumerate(ids):
            row = [*x, *np.asarray(res.tokens[i, : res.lengths[i]]).tolist()]
            if eos >= 0 and row[-1] != eos and i < len(ids) - 1:
                row.append(eos)  # the stream adds one after the document itself
            out.extend(row)
        _write_atomic(paths[k], np.asarray(out, "<i4").tobytes())
        rate = done * g.batch * g.new_tokens / (time.perf_counter() - start)
        log(f"data.generated: batch {k + 1}/{len(paths)} ({rate:.0f} tokens/s at most)")
    (folder / "settings.json").write_text(
        json.dumps(dataclasses.asdict(g) | {"model_spec": repr(r.spec.models[g.model])}, indent=1)
    )


_KEY = jax.random.PRNGKey(0)  # greedy: the key is never used for a choice


def _program(r, params: dict):
    """The jitted greedy generate program of `data.generated.model` at the generation batch,
    the params it takes (packed for the CPU kernel where it runs) and the prompt width."""
    from compiler.decode.backend import choose, prepare
    from compiler.ir import DecodeIR
    from compiler.sharded_programs import generate_program
    from compiler.sharding import Sharder

    g = r.spec.data.generated
    sh = Sharder.for_run(r.prog)
    backend_name = r.spec.decode.backend if r.spec.decode else "auto"
    try:
        backend = choose(backend_name, sh.n_devices)
    except ValueError as e:
        raise UserError(str(e)) from None
    decode = DecodeIR(
        policy="autoregressive",
        target=g.model,
        backend=backend_name,
        max_new_tokens=g.new_tokens,
        eos_id=getattr(r.tokenizer, "eos_id", -1),
    )
    width = -(-g.prompt_tokens // 32) * 32
    if width + g.new_tokens + 2 > r.prog.max_len:
        raise UserError(
            f"data.generated: prompt_tokens {g.prompt_tokens} + new_tokens {g.new_tokens} do not "
            f"fit shapes.max_len {r.prog.max_len}",
            field=("data", "generated", "new_tokens"),
            hint="raise shapes.max_len or lower them",
        )
    params = prepare(params, r.prog, decode, backend)
    if not backend.packed:
        params = sh.put(params, sh.params(params))
    fn = generate_program(r.prog, decode, sh, batch=g.batch, packed=backend.packed)
    return fn, params, width


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- prompts -------------------------------------------------------------------------------


def build_prompts(r, train_docs: list[Path]) -> list[str]:
    """code_prompts code prompts then chat_prompts chat prompts from the training files, each
    at most prompt_tokens tokens; files visited in an order fixed by data.seed."""
    g = r.spec.data.generated
    order = np.random.default_rng((r.spec.data.seed, 7)).permutation(len(train_docs))
    code, chat = [], []
    for i in order:
        if len(code) >= g.code_prompts and len(chat) >= g.chat_prompts:
            break
        text = train_docs[i].read_text(encoding="utf-8", errors="replace")
        rng = np.random.default_rng((r.spec.data.seed, int(i)))
        if len(code) < g.code_prompts:
            code += _code_prompt(r.tokenizer, text, rng, g.prompt_tokens)
        if len(chat) < g.chat_prompts:
            chat += _chat_prompt(r.tokenizer, text, rng, g.prompt_tokens)
    if len(code) < g.code_prompts or len(chat) < g.chat_prompts:
        raise UserError(
            f"data.generated: the training files give only {len(code)} code and {len(chat)} "
            f"chat prompts; lower code_prompts / chat_prompts"
        )
    return code[: g.code_prompts] + chat[: g.chat_prompts]


def _code_prompt(tokenizer, text: str, rng, max_tokens: int) -> list[str]:
    lines = text.splitlines(keepends=True)
    defs = [i for i, line in enumerate(lines) if line.lstrip().startswith("def ") and i > 8]
    if not defs:
        return []
    prompt = code_before_def(tokenizer, lines, defs[rng.integers(len(defs))], max_tokens)
    return [prompt] if prompt else []


_REQUESTS = (
    "Write a Python function `{name}({args})` that does the following: {doc}",
    "Explain what this Python function does:\n\n```python\n{code}\n```",
    "How would I use `{name}` in Python? It is documented as: {doc}",
)


def _chat_prompt(tokenizer, text: str, rng, max_tokens: int) -> list[str]:
    """One chat request about a documented public function of the file, or none."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    funcs = [
        f
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef)
        and not f.name.startswith("_")
        and (ast.get_docstring(f) or "").strip()
    ]
    if not funcs:
        return []
    f = funcs[rng.integers(len(funcs))]
    doc = ast.get_docstring(f).strip().split("\n\n")[0].replace("\n", " ")
    code = ast.get_source_segment(text, f) or ""
    args = ", ".join(a.arg for a in f.args.args)
    request = _REQUESTS[rng.integers(len(_REQUESTS))]
    for cut in (None, 12, 6):  # shorten the code or docstring until the prompt fits
        short = "\n".join(code.splitlines()[:cut]) if cut else code
        message = request.format(name=f.name, args=args, doc=doc[: 40 * (cut or 8)], code=short)
        prompt = chat_prompt(tokenizer, message)
        if len(prompt_ids(tokenizer, prompt)) <= max_tokens:
            return [prompt]
    return []
