"""JSONL training data: text records, located errors, and chat records rendered with the
tokenizer's chat template whose loss counts only the assistant's replies, through packing,
resume, per-process rows, and a training step."""

from __future__ import annotations

import itertools
import json

import jax
import numpy as np
import pytest
from chat_fixtures import CHAT_TEMPLATE, CHATS, save_tokenizer, write_jsonl

from compiler.loss_mask import NO_LOSS, counted, no_loss, token_ids
from compiler.nn import decoder_forward
from compiler.train import make_loss_fn, make_train_step
from compiler.train.steps import init_train_state
from runtime import chat, run
from runtime.corpus import MixedStream, SpecData, program_for_data
from runtime.data import (
    Record,
    document_keys,
    iter_texts,
    list_documents,
    make_batches,
    split_documents,
)
from runtime.errors import UserError
from runtime.tokenizer import ByteTokenizer
from runtime.weights.tokenizer import hf_tokenizer

BYTE = ByteTokenizer()
FAST = {"xla_backend_optimization_level": 0}  # tiny programs: compile fast


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return hf_tokenizer(save_tokenizer(tmp_path_factory.mktemp("tok")))


def take(stream, n):
    return [b.copy() for b in itertools.islice(stream, n)]


# --- text records ------------------------------------------------------------------------


def test_text_records_are_documents_packed_in_order(tmp_path):
    texts = ["alpha beta", "gamma\ndelta", "épsilon", "zeta eta theta", "iota"]
    lines = [json.dumps({"body": t, "id": i}) for i, t in enumerate(texts)]
    lines.insert(2, "   ")  # blank lines are skipped, and the line numbers stay the file's
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "plain.txt").write_text("a plain file")
    docs = list_documents(None, [str(tmp_path)], text_field="body")
    records = [d for d in docs if isinstance(d, Record)]
    assert [r.line for r in records] == [1, 2, 4, 5, 6]
    assert document_keys(docs) == [f"d.jsonl:{n}" for n in (1, 2, 4, 5, 6)] + ["plain.txt"]
    assert list(iter_texts(records)) == texts
    stream = make_batches(docs, BYTE, seq_len=7, batch=2, seed=3, train=False, window=1)
    got = np.concatenate([b.reshape(-1) for b in stream])
    order = np.random.default_rng((3, 0)).permutation(len(docs))
    whole = [texts[i] if i < 5 else "a plain file" for i in order]
    expected = b"".join(t.encode() + b"\n\n" for t in whole)
    assert (got < NO_LOSS).all()  # text is trained on every token
    assert expected.startswith(got.astype(np.uint8).tobytes()) and len(got) > len(expected) - 16
    # the split is per record: one file is enough for a validation split
    train, val = split_documents(records, 0.3, seed=0)
    assert train and val and not set(train) & set(val)


def _first_error(path, tokenizer=BYTE, field="text"):
    docs = list_documents(None, [str(path)], text_field=field)
    with pytest.raises(UserError) as e:
        list(make_batches(docs, tokenizer, seq_len=4, batch=1, train=False, window=1))
    return e.value


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "ok"', "not JSON (Expecting ',' delimiter at column 14)"),
        ('["a", "list"]', "a JSON list, not an object"),
        ('{"body": "x"}', 'no "text" field and no "messages" (its keys: \'body\')'),
        ('{"text": 42}', '"text" is a number, not a string (text) or a list (a chat)'),
        ('{"messages": [{"role": "user"}]}', 'messages[0] has no "content"'),
        ('{"messages": [{"role": "user", "content": 1}]}', "messages[0].content is a number"),
        ('{"messages": []}', "messages must be a non-empty list"),
        ('{"text": "\\ud800"}', '"text" is not valid Unicode (a lone surrogate)'),
    ],
)
def test_a_bad_line_is_a_user_error_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    err = _first_error(path)
    assert str(err).startswith(f"{path}:2: ") and message in str(err), str(err)
    assert err.field == ("data", "paths") and err.hint


def test_a_chat_record_needs_a_chat_template(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHATS[0]}])
    err = _first_error(path)  # the byte tokenizer has none
    assert str(err).startswith(f"{path}:1: ") and "chat template" in str(err)
    assert "tokenizer.kind: gguf" in err.hint


def test_a_template_that_raises_is_located(tmp_path, tok):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "tool", "content": "x"}]}])
    err = _first_error(path, tok)
    assert str(err).startswith(f"{path}:1: ") and "unknown role tool" in str(err)


def test_a_bad_line_through_the_cli_is_located_at_data_paths(tmp_path, capsys):
    from runtime.cli import main

    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "fine"}\n{"text": 3}\n')
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(paths=json.dumps([str(data)]), tokenizer="{kind: byte}"))
    assert main(["run", str(spec), "train", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{data}:2: " in err and "data.paths" in err and "s.yaml" in err


# --- chat records ------------------------------------------------------------------------


def test_a_chat_is_the_templates_rendering_with_only_the_replies_counted(tok):
    for messages in CHATS:
        ids = chat.encode(tok, messages)
        rendered = chat.render(tok, messages)
        assert tok.decode(token_ids(ids)) == rendered
        # exactly the assistant replies (their content and the turn's end) are counted
        replies = "".join(
            m["content"] + "<|im_end|>\n" for m in messages if m["role"] == "assistant"
        )
        assert tok.decode(token_ids(ids)[counted(ids)]) == replies
    assert rendered == (
        "<s><|im_start|>system\nYou count.<|im_end|>\n<|im_start|>user\nName two primes."
        "<|im_end|>\n<|im_start|>assistant\nTwo and three.<|im_end|>\n"
    )


def test_the_rendering_and_the_mask_agree_with_transformers(tok, tmp_path):
    """transformers renders the same text, tokenizes it to the same ids, and its assistant mask
    (from the template's {% generation %} blocks) marks the same tokens as ours."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(save_tokenizer(tmp_path / "tok")), bos_token="<s>",
        eos_token="<|endoftext|>", chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
    for messages in CHATS:
        ids = chat.encode(tok, messages)
        assert hf.apply_chat_template(messages, tokenize=False) == chat.render(tok, messages)
        assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
            chat.render(tok, messages, add_generation_prompt=True)
        )
        out = hf.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert out["input_ids"] == token_ids(ids).tolist()
        assert out["assistant_masks"] == counted(ids).astype(int).tolist()


def test_a_template_that_rewrites_earlier_turns_is_refused(tok):
    class Rewriting:  # prints only the last message: not a prefix of the whole conversation
        chat_template = "{{ messages[-1]['content'] }}"

    with pytest.raises(chat.ChatError, match="turn by turn"):
        chat.encode(Rewriting(), CHATS[0])


@pytest.fixture(scope="module")
def chat_docs(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("chats")
    records = [{"messages": CHATS[i % 2]} for i in range(6)] + [{"text": "Paris is big."}]
    return list_documents(None, [str(write_jsonl(folder / "chats.jsonl", records))])


def test_the_flags_survive_packing_and_the_separator_after_a_chat_is_not_counted(chat_docs, tok):
    stream = make_batches(chat_docs, tok, seq_len=15, batch=2, seed=0, train=False, window=1)
    got = np.concatenate([b.reshape(-1) for b in stream])
    order = np.random.default_rng((0, 0)).permutation(len(chat_docs))
    want = []
    for i in order:
        ids, is_chat = chat_docs[i].tokens(tok)
        want += [ids, np.array([no_loss(tok.eos_id) if is_chat else tok.eos_id], np.int32)]
    want = np.concatenate(want)
    assert 0 < counted(got).sum() < len(got)
    np.testing.assert_array_equal(got, want[: len(got)])


def test_resuming_a_masked_stream_mid_window_is_exact(chat_docs, tok):
    opts = dict(seq_len=9, batch=2, seed=4, window=3)
    full = make_batches(chat_docs, tok, **opts)
    reference, states = [], [full.state()]
    for batch, state in itertools.islice(full.with_state(), 40):
        reference.append(batch.copy())
        states.append(state)
    assert any(s["skip"] for s in states) and len({s["epoch"] for s in states}) > 1
    assert all(not counted(b).all() for b in reference[:5])  # the flags are there
    for k in (1, 2, 7, 22, 39):  # inside windows and across epochs
        saved = json.loads(json.dumps(states[k]))
        resumed = take(make_batches(chat_docs, tok, state=saved, **opts), 40 - k)
        assert all((x == y).all() for x, y in zip(resumed, reference[k:], strict=True)), k
    # each process keeps its rows of every batch, flags included
    halves = [take(make_batches(chat_docs, tok, rows=r, **opts), 10) for r in ([0], [1])]
    for i in range(10):
        np.testing.assert_array_equal(np.concatenate([halves[0][i], halves[1][i]]), reference[i])


def test_a_mixed_batch_keeps_each_parts_flags(chat_docs, tok, tmp_path):
    """data.generated's rows (plain ids) and a chat corpus's rows side by side."""
    generated = tmp_path / "g.ids"
    generated.write_bytes(np.arange(3, 90, dtype="<i4").tobytes())
    opts = dict(seq_len=9, batch=1, seed=0)
    parts = {"generated": make_batches([generated], tok, **opts),
             "corpus": make_batches(chat_docs, tok, **opts)}  # fmt: skip
    alone = take(make_batches(chat_docs, tok, **opts), 6)
    batches = take(MixedStream(parts), 6)
    assert all(counted(b[0]).all() for b in batches)
    for b, c in zip(batches, alone, strict=True):
        np.testing.assert_array_equal(b[1:], c)
    assert not all(counted(b[1]).all() for b in batches)


def test_another_text_field_or_template_is_another_stream(chat_docs, tok, tmp_path):
    state = make_batches(chat_docs, tok, seq_len=9, batch=2).state()
    other = [Record(d.path, d.line, d.start, d.end, "body") for d in chat_docs]
    with pytest.raises(ValueError, match="other data settings"):
        make_batches(other, tok, seq_len=9, batch=2, state=state)
    retemplated = hf_tokenizer(
        save_tokenizer(tmp_path / "t", CHAT_TEMPLATE.replace("brief", "kind"))
    )
    with pytest.raises(ValueError, match="other data settings"):
        make_batches(chat_docs, retemplated, seq_len=9, batch=2, state=state)


# --- training on chats ---------------------------------------------------------------------

SPEC = """
tandem: 1
name: tiny-chat
data: {{paths: {paths}, seq_len: 24, val_fraction: 0}}
tokenizer: {tokenizer}
models:
  large: {{d_model: 32, n_layers: 1, n_heads: 2}}
train:
  - {{name: lm, trainable: [large], steps: 2, batch: 2, eval_every: 100,
     checkpoint_every: 100}}
shapes: {{batch: 1, max_len: 64}}
"""


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, tok, chat_docs):
    folder = tmp_path_factory.mktemp("chatrun")
    spec = folder / "chat.yaml"
    tokenizer = json.dumps({"kind": "hf-json", "path": str(tok.path)})
    spec.write_text(SPEC.format(paths=json.dumps([str(chat_docs[0].path)]), tokenizer=tokenizer))
    return run.open_run(spec, run_dir=folder / "run", log=lambda *a: None)


def test_a_training_steps_loss_is_the_ce_over_the_reply_tokens_only(chat_run):
    r = chat_run
    data = SpecData(r.spec, r.tokenizer)
    assert data.loss_mask
    prog = program_for_data(r.prog, data)
    st = prog.train[0]
    assert st.loss_mask and not r.prog.train[0].loss_mask
    stream = data.train(st.seq_len, st.batch, st.seed, None)
    batch = next(stream)
    stream.close()
    assert 0 < counted(batch[:, 1:]).sum() < batch[:, 1:].size
    params = run.initial_params(r)
    # the CE written out over the counted targets
    inputs, targets = token_ids(batch[:, :-1]), batch[:, 1:]
    logits = decoder_forward(params["large"], prog.model("large"), inputs)[0]
    nll = -np.take_along_axis(
        np.asarray(jax.nn.log_softmax(logits)), token_ids(targets)[..., None], -1
    )
    want = nll[..., 0][counted(targets)].mean()
    state = init_train_state(prog, st, params)
    step = jax.jit(make_train_step(prog, st), compiler_options=FAST)
    _, metrics = step(state, batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
    # a row's last token is a target and no input: any id there is ignored while it is flagged
    # (a context token, e.g. the user's) and counted when it is not (a reply token)
    loss_fn = jax.jit(make_loss_fn(prog, st), compiler_options=FAST)
    base = float(loss_fn(params, batch, None)[0])
    np.testing.assert_allclose(base, want, rtol=1e-5)
    other_id = (token_ids(batch[0, -1]) + 1) % r.tokenizer.vocab_size
    context, reply = batch.copy(), batch.copy()
    context[0, -1], reply[0, -1] = no_loss(other_id), other_id
    assert float(loss_fn(params, context, None)[0]) == base
    assert abs(float(loss_fn(params, reply, None)[0]) - base) > 1e-6


def test_a_stage_trains_on_chat_jsonl_end_to_end(chat_run):
    results = run.train(chat_run)
    assert results[0].steps == 2 and np.isfinite(results[0].metrics.get("loss", 0.0))
    rows = [json.loads(x) for x in (chat_run.run_dir / "lm" / "metrics.jsonl").open()]
    assert rows and all(np.isfinite(row["loss"]) for row in rows if row["kind"] == "train")
