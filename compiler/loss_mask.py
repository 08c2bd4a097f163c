"""Which target tokens a loss counts, carried inside the token ids: the one place that encodes
and decodes the rule.

A training batch is one int32 array `[B, T + 1]` (inputs `row[:-1]`, targets `row[1:]`). A token
whose bit 30 (`NO_LOSS`) is set is still a token of the text (the model reads its clean id as
input), but the loss does not count the position that predicts it. Chat training data
(`runtime.chat`) sets it on every token that is not an assistant reply, so a model learns to
answer, not to write the user's turns.

Why a bit of the id rather than a second array: a batch already goes through the packed,
shuffled and resumable token stream (`runtime.data.TokenStream`: rows cut across document
boundaries, per-process rows, a saved position), the mixed stream, the teacher cache's store
(`tokens`), and the sharded programs (`compiler.sharded_programs`), all of which treat it as one
int32 array. A flag inside each id follows its token through every one of them with no change:
it stays attached to the token whatever row, window, process, chunk or device the token lands
in, and a second array would have to be threaded, stored and sharded alongside everywhere.
Bit 30 is free: ids are below `tandem_dsl.model.MAX_VOCAB` (2**22), and it keeps every value
positive (bit 31 would make flagged ids negative, and -1 means "none" in places).

Text without flags (every plain-text corpus) is unchanged, bit for bit: `token_ids` of it is
itself, every weight is 1, and the losses then compute exactly what they computed before
(`compiler.train.losses`).

Works on numpy and JAX arrays alike (bitwise ops only); no JAX import.
"""

from __future__ import annotations

NO_LOSS = 1 << 30  # set on a token: the loss does not count the position that predicts it
ID_BITS = NO_LOSS - 1  # the token id itself


def no_loss(ids):
    """`ids` with the flag set: the loss will not count predicting them."""
    return ids | NO_LOSS


def token_ids(tokens):
    """The clean ids (what a model reads), flags removed."""
    return tokens & ID_BITS


def counted(tokens):
    """True where the loss counts predicting the token (no flag)."""
    return (tokens & NO_LOSS) == 0
