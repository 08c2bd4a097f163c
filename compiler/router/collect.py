"""Router training data, collected by running the tandem (Tandem + SPEED with a fixed block of
max_gamma drafts) on prompts: at every drafted position, the router's features from M_S's draft
distribution there, and the labels that M_L's verify pass gives at the same position (both
distributions condition on the same prefix x_<=f, d_1..d_{i-1}):

- tv: total-variation distance between M_S's and M_L's next-token distributions (temperature 1),
  the paper's soft label for "M_L disagrees";
- reject: the event the decode loop acts on - greedy: argmax M_S != argmax M_L; sampled:
  1 - sum_x min(p(x), q(x)) = tv is already its probability, so reject = tv > 0.5 is only a
  summary there.

The rounds run inside one jitted `lax.scan` over the same `speculative_step` the generate
program uses.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from compiler.decode.loops import prefill, speculative_step
from compiler.decode.programs import loop_config
from compiler.decode.sampling import probs as processed
from compiler.decode.state import LoopConfig
from compiler.ir import DecodeIR, ProgramIR
from compiler.router.features import features


class RouterData(NamedTuple):
    x: np.ndarray  # [N, F] features
    tv: np.ndarray  # [N] soft label
    reject: np.ndarray  # [N] bool
    position: np.ndarray  # [N] 1-based draft index in its round
    top_p: np.ndarray  # [N] M_S's top probability (the confidence baseline's signal)


def collect_config(prog: ProgramIR, decode: DecodeIR, max_new: int) -> LoopConfig:
    g = decode.draft_len
    d = DecodeIR(policy="speed", target=decode.target, draft=decode.draft, gamma=g,
                 sampling=decode.sampling, max_new_tokens=max_new)  # fmt: skip
    return loop_config(prog, d, return_logits=True)


def signal_probs(cfg: LoopConfig, logits: jax.Array) -> jax.Array:
    """What the decode loop's rules see as M_S's distribution (`DraftSignal.probs`)."""
    return (
        jax.nn.softmax(logits, axis=-1) if cfg.sampling.greedy else processed(logits, cfg.sampling)
    )


@partial(jax.jit, static_argnums=(0, 5, 6))
def _collect(cfg: LoopConfig, params, prompt, lens, key, rounds: int, top_k: int):
    state = prefill(cfg, params, prompt, lens, key)
    embed = params[cfg.draft.name]["embed"]["tokens"]

    def one(state, _):
        active = ~state.done
        state, d, logits = speculative_step(cfg, params, state)
        q_raw, p_raw = d.logits, logits[:, :-1]  # [B, G, V] both at positions f .. f+G-1
        qs, ps = jax.nn.softmax(q_raw, -1), jax.nn.softmax(p_raw, -1)
        tv = 0.5 * jnp.abs(qs - ps).sum(-1)  # [B, G]
        sig = signal_probs(cfg, q_raw)
        if cfg.sampling.greedy:
            reject = jnp.argmax(q_raw, -1) != jnp.argmax(p_raw, -1)
        else:
            reject = tv > 0.5
        valid = active[:, None] & (jnp.arange(cfg.gamma)[None] < d.n_draft[:, None])
        out = (features(sig, embed, top_k), tv, reject, valid, sig.max(-1), d.tokens)
        return state, out

    return jax.lax.scan(one, state, None, length=rounds)[1]


def collect(
    cfg: LoopConfig, params: dict, prompt, lens, key, rounds: int, top_k: int
) -> RouterData:
    """prompt [B, P] -> every drafted position of `rounds` rounds (done rows are skipped)."""
    x, tv, reject, valid, top_p, _ = jax.device_get(
        _collect(cfg, params, jnp.asarray(prompt), jnp.asarray(lens), key, rounds, top_k)
    )
    pos = np.broadcast_to(np.arange(1, cfg.gamma + 1), valid.shape)
    m = np.asarray(valid, bool)
    return RouterData(x[m], tv[m], reject[m], pos[m], top_p[m])


def concat(parts: list[RouterData]) -> RouterData:
    return RouterData(*(np.concatenate(f) for f in zip(*parts, strict=True)))
