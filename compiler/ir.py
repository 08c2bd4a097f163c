"""The typed IR: frozen dataclasses with every shape concrete.

The IR is the only input to lowering. It is built from a checked spec by
`compiler.build_ir` and never imports the spec layer's types into model code.
Derived values (head_dim, parameter counts, FLOPs, cache bytes) live here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from compiler.errors import IRInvariantError
from tandem_dsl import rope_scaling, rules

_DECODER_CHOICES = {
    "norm": ("rmsnorm", "layernorm"),
    "mlp": ("swiglu", "gelu"),
    "pos": ("rope", "learned"),
    "dtype": ("float32", "bfloat16", "float16"),
}


@dataclass(frozen=True, kw_only=True)
class RopeScalingIR:
    """llama3 RoPE scaling (tandem_dsl/rope_scaling.py has the rule)."""

    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    rope_type: str = "llama3"


@dataclass(frozen=True, kw_only=True)
class DecoderIR:
    """A Llama-style decoder (also GPT-style through norm/mlp/pos options, Qwen2-style with
    qkv_bias)."""

    name: str
    vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    max_len: int
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    norm_eps: float = 1e-5
    mlp: str = "swiglu"  # swiglu | gelu
    pos: str = "rope"  # rope | learned
    rope_theta: float = 10000.0
    rope_scaling: RopeScalingIR | None = None
    head_dim: int = 0  # width of one head; 0 = d_model // n_heads (filled in at construction)
    qkv_bias: bool = False  # biases on q, k, v (not on o or the MLP)
    tie_embeddings: bool = False
    dtype: str = "float32"  # float32 | bfloat16 | float16 (compute and storage)
    trainable: bool = True
    embed_trainable: bool = True  # False: the token table (and a tied head) stays fixed

    def __post_init__(self):
        """The one invariant pass of a decoder, however it was built (a checked spec, the
        builder, a bench's variant): the model code trusts what passes it."""
        for name, allowed in _DECODER_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise IRInvariantError(f"model {self.name!r}: {name} must be one of {allowed}")
        if min(self.d_model, self.n_heads, self.n_kv_heads) < 1 or (
            (self.head_dim == 0 and self.d_model % self.n_heads) or self.n_heads % self.n_kv_heads
        ):
            raise IRInvariantError(
                f"model {self.name!r}: d_model {self.d_model} / n_heads {self.n_heads} / "
                f"n_kv_heads {self.n_kv_heads} must divide evenly"
            )
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.head_dim < 1:
            raise IRInvariantError(f"model {self.name!r}: head_dim {self.head_dim} < 1")
        if self.rope_scaling is not None and self.pos != "rope":
            raise IRInvariantError(f"model {self.name!r}: rope_scaling needs pos rope")

    @property
    def rope_frequencies(self) -> tuple[float, ...]:
        """The RoPE frequency of each rotated pair, rope_scaling applied."""
        scaling = None if self.rope_scaling is None else dataclasses.asdict(self.rope_scaling)
        return tuple(rope_scaling.frequencies(self.head_dim, self.rope_theta, scaling))

    @property
    def dtype_bytes(self) -> int:
        return {"float32": 4, "bfloat16": 2, "float16": 2}[self.dtype]

    @property
    def norm_params(self) -> int:
        """One norm: scale (rmsnorm) or scale + bias (layernorm)."""
        return self.d_model if self.norm == "rmsnorm" else 2 * self.d_model

    @property
    def attn_params(self) -> int:
        """One layer's wq, wk, wv, wo, and the q/k/v biases with qkv_bias."""
        q_width = self.n_heads * self.head_dim
        kv_width = self.n_kv_heads * self.head_dim
        biases = q_width + 2 * kv_width if self.qkv_bias else 0
        return 2 * self.d_model * q_width + 2 * self.d_model * kv_width + biases

    @property
    def mlp_params(self) -> int:
        """One layer's MLP: swiglu w_gate, w_up, w_down; gelu w_up, w_down (no biases)."""
        n_mats = 3 if self.mlp == "swiglu" else 2
        return n_mats * self.d_model * self.d_ff

    @property
    def layer_params(self) -> int:
        return self.attn_params + self.mlp_params + 2 * self.norm_params

    @property
    def embed_params(self) -> int:
        """Token table, plus the position table for learned positions."""
        pos = self.max_len * self.d_model if self.pos == "learned" else 0
        return self.vocab * self.d_model + pos

    @property
    def head_params(self) -> int:
        """The untied output layer (0 when tied to the token table)."""
        return 0 if self.tie_embeddings else self.d_model * self.vocab

    @property
    def param_count(self) -> int:
        """Exact size of `compiler.nn.init_decoder(self, rng)`."""
        return (
            self.embed_params
            + self.n_layers * self.layer_params
            + self.norm_params
            + self.head_params
        )

    @property
    def matmul_params(self) -> int:
        """Weights used in a matmul per token: every layer's attn + MLP and the output layer
        (tied or not); the embedding lookups and norms are not matmuls."""
        return self.n_layers * (self.attn_params + self.mlp_params) + self.d_model * self.vocab

    def flops_per_token(self, context_len: int) -> int:
        """Analytic forward FLOPs of one token that attends to `context_len` positions:
        2 * matmul_params + per layer 2 * 2 * n_heads * head_dim * context_len (QK^T, PV).
        Norms, softmax, RoPE and activations are not counted."""
        attn = 4 * self.n_heads * self.head_dim * context_len
        return 2 * self.matmul_params + self.n_layers * attn

    @property
    def kv_cache_bytes_per_token(self) -> int:
        """K and V for one position in every layer, in the model dtype."""
        return self.n_layers * 2 * self.n_kv_heads * self.head_dim * self.dtype_bytes

    def cache_shape(self, batch: int, max_len: int) -> tuple[int, int, int, int]:
        """Shape of one layer's K (or V) buffer: [B, S, n_kv_heads, head_dim]."""
        return (batch, max_len, self.n_kv_heads, self.head_dim)


@dataclass(frozen=True, kw_only=True)
class ProjectionIR:
    """Maps large-model residual vectors (d_in) to small-model ones (d_out)."""

    name: str
    kind: str  # a key of compiler.nn.projection.KINDS
    d_in: int
    d_out: int
    per_layer: bool = True  # one projection per wired small layer, or one shared
    bias: bool = False
    hidden: int = 0  # the inner width of kinds that have one; 0 = d_out
    init: str = "random"  # random | identity (linear, d_in == d_out)

    def __post_init__(self):
        problem = self.init == "identity" and rules.identity_projection(
            self.name, self.kind, self.d_in, self.d_out
        )
        if problem:
            raise IRInvariantError(problem)

    @property
    def hidden_dim(self) -> int:
        """The inner width (e.g. an mlp projection's hidden layer)."""
        return self.hidden if self.hidden > 0 else self.d_out


@dataclass(frozen=True, kw_only=True)
class WiringIR:
    """How a small model reads a large model.

    `layer_map[j]` is the large-model layer whose residual stream (0 = embeddings,
    n_layers = last layer before the final norm) small layer j attends to, or None
    for an ordinary causal layer. kind == "none" means an independent model: every
    entry is None and there is no projection.
    """

    kind: str  # tandem | none
    query: str
    memory: str | None
    layer_map: tuple[int | None, ...]
    projection: ProjectionIR | None
    block: int = 2  # training block length gamma (minimum when sampled)
    block_max: int = 2  # == block: fixed; > block: sampled per sequence from [block, block_max]
    random_offset: bool = False  # shift the block grid by a random offset per sequence
    fuse: int | None = None  # memory layer whose last processed state feeds M_S's input
    # memory prediction past the frontier; the weight of its regression loss
    predict: float | None = None

    @property
    def wired_layers(self) -> tuple[int, ...]:
        return tuple(j for j, src in enumerate(self.layer_map) if src is not None)


@dataclass(frozen=True, kw_only=True)
class OptimizerIR:
    kind: str = "adamw"  # adamw | adam | sgd
    lr: float = 3e-3
    warmup: int = 0
    schedule: str = "cosine"  # cosine | constant | linear
    weight_decay: float = 0.0
    clip: float = 1.0  # global-norm clipping, 0 = off
    b1: float = 0.9
    b2: float = 0.95


@dataclass(frozen=True, kw_only=True)
class ObjectiveIR:
    """What a training stage optimizes.

    kind: ce (language modelling / Tandem-CE on `model`) or distil
    ((1-w)*CE + w*CE(softmax(z_teacher/T), p_model)).
    """

    kind: str
    model: str
    teacher: str | None = None
    weight: float = 0.5
    temperature: float = 1.0
    draft_vocab: int = 0  # > 0: the loss covers ids < draft_vocab only (a cut output layer)


@dataclass(frozen=True, kw_only=True)
class TeacherCacheIR:
    """Run the stage's frozen reader once over `batches` batches and train from the store."""

    batches: int
    top_k: int = 64
    noise: float = 0.0  # uniform feature noise, a fraction of each vector's RMS


@dataclass(frozen=True, kw_only=True)
class ScaleIR:
    """How a train step runs (memory and compile time), not what it computes."""

    remat: str = "none"  # none | full | dots
    grad_accum: int = 1  # micro-batches per step
    scan_layers: bool = False  # plain stacks as one lax.scan
    attention: str = "xla"  # xla | fused (jax.nn.dot_product_attention)


@dataclass(frozen=True, kw_only=True)
class TrainStageIR:
    name: str
    objective: ObjectiveIR
    trainable: tuple[str, ...]  # model and projection names that get gradients
    optimizer: OptimizerIR
    steps: int
    batch: int
    seq_len: int
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 100
    seed: int = 0
    teacher_cache: TeacherCacheIR | None = None
    scale: ScaleIR = ScaleIR()
    # the tokens may carry no-loss flags (`compiler.loss_mask`): set by the runtime for data
    # that can hold them (JSONL); False compiles the unmasked program
    loss_mask: bool = False


@dataclass(frozen=True, kw_only=True)
class SamplingIR:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, kw_only=True)
class AdaptiveIR:
    rule: str = "threshold"  # threshold | expected_gain | confidence | heuristic | fixed
    router: str = "mlp"
    hidden: int = 64
    top_k: int = 4
    threshold: float = 0.8
    max_gamma: int = 16
    activation: str = "gelu"  # the router's hidden activation


@dataclass(frozen=True, kw_only=True)
class DecodeIR:
    policy: str  # autoregressive | standalone | speed | adaptive
    target: str
    draft: str | None = None  # a model name (None for autoregressive)
    draft_ngram: int = 0  # > 0: prompt-lookup drafter with this n, no draft model
    draft_vocab: int = 0  # > 0: the draft model proposes only ids < draft_vocab
    lookup: int = 0  # > 0: hybrid drafting, n-gram prompt lookup first, the draft model elsewhere
    lookup_min: int = 0  # shortest match drafted by lookup (0 = lookup)
    lookup_gamma: int = 0  # drafts per lookup round (0 = gamma)
    backend: str = "auto"  # mat-mul backend: auto | xla | kernel (compiler.decode.backend)
    gamma: int = 4
    free_token: bool = True  # standalone: the large model's own next token starts M_S
    adaptive: AdaptiveIR | None = None
    sampling: SamplingIR = field(default_factory=SamplingIR)
    max_new_tokens: int = 64
    eos_id: int = -1  # -1 = never stop early

    @property
    def draft_len(self) -> int:
        """The longest draft of a round (the loop's draft buffer)."""
        if self.adaptive:
            return self.adaptive.max_gamma
        return max(self.gamma, self.lookup_gamma if self.lookup else 0)

    def prompt_budget(self, max_len: int) -> int:
        """The longest prompt whose generation fits a KV cache of max_len positions."""
        return max_len - self.max_new_tokens - self.draft_len - 2


@dataclass(frozen=True, kw_only=True)
class MeshIR:
    axes: tuple[tuple[str, int], ...] = (("data", -1), ("model", 1))
    rules: tuple[tuple[str, str | None], ...] = ()  # logical axis -> mesh axis, first match wins


@dataclass(frozen=True, kw_only=True)
class ProgramIR:
    """Everything lowering needs: models, the wiring of each small model, stages, decode."""

    name: str
    models: tuple[DecoderIR, ...]
    wirings: tuple[WiringIR, ...]
    train: tuple[TrainStageIR, ...]
    decode: DecodeIR | None
    batch: int
    max_len: int
    mesh: MeshIR = field(default_factory=MeshIR)

    def model(self, name: str) -> DecoderIR:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def wiring_of(self, query: str) -> WiringIR | None:
        for w in self.wirings:
            if w.query == query:
                return w
        return None

    def is_tandem(self, query: str) -> bool:
        """Does model `query` read another model's hidden states (Tandem wiring)?"""
        w = self.wiring_of(query)
        return w is not None and w.kind == "tandem"
