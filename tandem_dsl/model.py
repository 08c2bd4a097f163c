"""The typed spec: frozen dataclasses, the one source of truth.

The JSON Schema (`tandem_dsl.schema`) and the reference page (`docs/spec-reference.md`)
are generated from these classes, so the schema and the dataclasses cannot drift.
Field metadata: `doc`, `enum`, `minimum`, `maximum`, `hint` (for a value out of range),
`yaml` (the YAML key when it is a Python keyword) and `default_expr` (a default that depends
on other values, written as an expression with `{self}` standing for the path of the object
that owns the field).
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field

SPEC_VERSION = 1
# Bounds past which a size is a typo, not a model: they keep absurd values (d_model 1e9, 1e5
# layers) from reaching XLA, which hangs or aborts on them. Integers without a stated maximum
# stop at INT_MAX (what an int32 step counter or seed holds).
INT_MAX = 2**31 - 1
MAX_WIDTH = 1 << 16
MAX_LAYERS = 1024
MAX_HEADS = 1024
MAX_VOCAB = 1 << 22
MAX_TOKENS = 1 << 20
MAX_BATCH = 1 << 20
# Projection kinds, each with whether it needs `hidden` (an inner width). The compiler has one
# entry per name (compiler/nn/projection.py KINDS); a test keeps the two in step.
PROJECTION_KINDS = {"linear": False, "mlp": True, "lowrank": True}
# Stop rules of adaptive drafting, each with what it needs besides the decode section: the
# trained router, and this machine's measured costs. The compiler builds each by name
# (compiler/decode/rules.py RULES); a test keeps the two in step.
STOP_RULES = {
    "threshold": ("router",),
    "expected_gain": ("router", "costs"),
    "confidence": (),
    "margin": (),
    "heuristic": (),
    "fixed": (),
}
# Training objectives, each with the objective fields it needs. The compiler has one entry per
# name (compiler/train/objective.py OBJECTIVES); a test keeps the two in step.
OBJECTIVE_KINDS = {"ce": (), "distil": ("teacher",)}
# Names become folder and file names (runs/<name>/<stage>/...) and parameter keys.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_HINT = (
    "use letters, digits, '_', '-' and '.' (not '..'), starting with a letter or digit, at "
    "most 64 characters"
)


def valid_name(name: str) -> bool:
    return bool(NAME.fullmatch(name)) and ".." not in name


def bad_name_message(name: str) -> str:
    return f"'{name}' cannot be a name: names become folder names and parameter keys"


def opt(default=MISSING, *, doc: str, factory=MISSING, **meta):
    """A spec field: a default (or required when none is given) and schema metadata."""
    meta["doc"] = doc
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class Generated:
    model: str = opt(doc="The model that writes the text (greedy), with its initial weights.")
    code_prompts: int = opt(
        512, doc="Prompts cut from training files: the code up to a `def` line.", minimum=0
    )
    chat_prompts: int = opt(
        512,
        doc="Requests built from the training files' documented functions, wrapped in the "
        "tokenizer's chat template.",
        minimum=0,
    )
    prompt_tokens: int = opt(96, doc="Longest prompt in tokens.", minimum=8, maximum=MAX_TOKENS)
    new_tokens: int = opt(128, doc="Tokens generated per prompt.", minimum=1, maximum=MAX_TOKENS)
    batch: int = opt(16, doc="Prompts generated together.", minimum=1, maximum=1024)
    share: float = opt(
        0.75,
        doc="Fraction of each training batch's rows drawn from the generated text (the rest "
        "from the corpus).",
        minimum=0,
        maximum=1,
    )


@dataclass(frozen=True, kw_only=True)
class Data:
    corpus: str | None = opt(
        "stdlib", doc="Built-in corpus: the Python standard library's own source.", enum=["stdlib"]
    )
    paths: list[str] = opt(
        factory=list,
        doc="Files, folders or globs used instead of the corpus: text files (each a document), "
        "pre-tokenized `.ids` files, and `.jsonl` files (one JSON object per line, each a "
        'document): `{"text": ...}` (see `text_field`) is trained on as text; `{"messages": '
        '[{"role": ..., "content": ...}, ...]}` is rendered with the tokenizer\'s chat template '
        "and the loss counts only the assistant's replies.",
    )
    text_field: str = opt(
        "text",
        doc="The field of a `.jsonl` record that holds its text (a record without it is read "
        "as a chat from its `messages`; the field holding a list of messages is a chat too).",
    )
    seq_len: int = opt(
        256, doc="Training sequence length in tokens.", minimum=2, maximum=MAX_TOKENS
    )
    val_fraction: float = opt(0.01, doc="Fraction of documents held out.", minimum=0, maximum=0.5)
    seed: int = opt(0, doc="Seed of the split and the data order.", minimum=0)
    generated: Generated | None = opt(
        None,
        doc="Train also on a model's own greedy continuations (self-distillation data for "
        "drafters: the text they will draft at decode time), generated once into the run "
        "directory and reused while these settings, the model and the corpus stay the same.",
    )


@dataclass(frozen=True, kw_only=True)
class Tokenizer:
    kind: str = opt("byte", doc="Tokenizer kind.", enum=["byte", "bpe", "gguf", "hf-json"])
    vocab_size: int = opt(
        0, doc="Vocabulary size for `bpe` (trained locally).", minimum=0, maximum=1 << 16
    )
    path: str | None = opt(None, doc="File for `gguf` / `hf-json` tokenizers.")


@dataclass(frozen=True, kw_only=True)
class Init:
    from_: str = opt(
        "random",
        doc="Where the weights come from.",
        enum=["random", "checkpoint", "gguf", "safetensors"],
        yaml="from",
    )
    path: str | None = opt(None, doc="Checkpoint directory or weight file.")
    seed: int = opt(0, doc="Seed for random init.", minimum=0)
    embed_from: str | None = opt(
        None,
        doc="Start the token embeddings (and a tied output layer) from this model's, reduced "
        "to d_model along their top principal directions: a distilled student then starts "
        "with the teacher's token geometry instead of noise. At equal d_model the table is "
        "copied as is.",
    )
    copy_layers: list[int] = opt(
        factory=list,
        doc="Start layers 0, 1, ... from these layers of the `embed_from` model, and the "
        "final norm from its final norm (it must have the same shape: d_model, heads, d_ff, "
        "mlp, norm): a drafter that begins as a slice of its teacher, e.g. [29] for its last "
        "layer.",
    )


def _default_d_ff(owner: str, tree: dict) -> str:
    node = tree
    for part in owner.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    if node.get("mlp", "swiglu") == "gelu":
        return f"4 * ${{{owner}.d_model}}"
    return f"(8 * ${{{owner}.d_model}} // 3 + 31) // 32 * 32"


def _default_cache_batches(owner: str, tree: dict) -> str:
    stage = owner.rsplit(".", 1)[0]  # train[i]
    return "${" + stage.replace("[", ".").replace("]", "") + ".steps}"


def _default_vocab(owner: str, tree: dict) -> str | int:
    kind = (tree.get("tokenizer") or {}).get("kind", "byte")
    return 256 if kind == "byte" else "${tokenizer.vocab_size}"


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    rope_type: str = opt(
        "llama3",
        doc="`llama3` (Llama 3.1 and later): frequencies whose wavelength exceeds "
        "original_max_position_embeddings / low_freq_factor are divided by `factor`, those "
        "shorter than original_max_position_embeddings / high_freq_factor are kept, and the "
        "ones between are interpolated smoothly.",
        enum=["llama3"],
    )
    factor: float = opt(doc="Divisor of the low frequencies.", exclusive_minimum=0)
    low_freq_factor: float = opt(1.0, doc="Sets the low-frequency wavelength.", exclusive_minimum=0)
    high_freq_factor: float = opt(
        4.0, doc="Sets the high-frequency wavelength (above low_freq_factor).", exclusive_minimum=0
    )
    original_max_position_embeddings: int = opt(
        doc="The context length the model was pretrained with.", minimum=1, maximum=MAX_TOKENS
    )


# Fields marked `from_weights` are what a weight file states (`init.from: gguf | safetensors`):
# a spec may leave them out (tandem_dsl/from_weights.py reads them from the file's header), and a
# stated value must agree with the file.
@dataclass(frozen=True, kw_only=True)
class Decoder:
    d_model: int = opt(doc="Residual width.", minimum=1, maximum=MAX_WIDTH, from_weights=True)
    n_layers: int = opt(
        doc="Number of transformer layers.", minimum=1, maximum=MAX_LAYERS, from_weights=True
    )
    n_heads: int = opt(doc="Query heads.", minimum=1, maximum=MAX_HEADS, from_weights=True)
    type: str = opt("decoder", doc="Model family.", enum=["decoder"])
    n_kv_heads: int = opt(
        doc="Key/value heads (grouped-query attention).",
        minimum=1,
        maximum=MAX_HEADS,
        default_expr="${{self}.n_heads}",
        from_weights=True,
    )
    head_dim: int | None = opt(
        None,
        doc="Width of one attention head (null: d_model / n_heads). Set it for models whose "
        "heads are wider or narrower than that (Qwen3, Gemma, Mistral NeMo): q, k and v then have "
        "n_heads * head_dim and n_kv_heads * head_dim columns.",
        minimum=2,
        maximum=MAX_WIDTH,
        from_weights=True,
    )
    d_ff: int = opt(
        doc="MLP hidden width (default: 8/3 d rounded up to 32 for swiglu, 4 d for gelu).",
        minimum=1,
        maximum=16 * MAX_WIDTH,
        default_fn=_default_d_ff,
        from_weights=True,
    )
    vocab: int = opt(
        doc="Vocabulary size (default: the weight file's, else the tokenizer's).",
        hint="give the model `vocab:` (the size of its tokenizer's vocabulary); the default "
        "is 256 for the byte tokenizer, tokenizer.vocab_size for bpe, and the size of the "
        "tokenizer file's vocabulary for gguf and hf-json",
        minimum=2,
        maximum=MAX_VOCAB,
        default_fn=_default_vocab,
        from_weights=True,
    )
    norm: str = opt(
        "rmsnorm", doc="Normalization.", enum=["rmsnorm", "layernorm"], from_weights=True
    )
    norm_eps: float = opt(1e-5, doc="Normalization epsilon.", minimum=0, from_weights=True)
    mlp: str = opt("swiglu", doc="MLP kind.", enum=["swiglu", "gelu"], from_weights=True)
    pos: str = opt("rope", doc="Positions.", enum=["rope", "learned"], from_weights=True)
    rope_theta: float = opt(10000.0, doc="RoPE base.", minimum=1, from_weights=True)
    rope_scaling: RopeScaling | None = opt(
        None, doc="RoPE frequency scaling (null: none).", from_weights=True
    )
    qkv_bias: bool = opt(
        False,
        doc="Biases on the q, k and v projections (Qwen2, Qwen2.5); the output projection and "
        "the MLP have none.",
        from_weights=True,
    )
    tie_embeddings: bool = opt(
        False, doc="Share the embedding and output matrices.", from_weights=True
    )
    init: Init = opt(factory=Init, doc="Weight source.")
    trainable: bool = opt(True, doc="False freezes the model (stop_gradient, no optimizer).")
    embed_trainable: bool = opt(
        True,
        doc="False keeps the token embeddings (and a tied output layer) at their initial "
        "values while the rest trains: with `init.embed_from` at equal width, a drafter that "
        "reads and writes tokens in its teacher's own table.",
    )
    dtype: str = opt("float32", doc="Parameter and compute dtype.", enum=["float32", "bfloat16"])


@dataclass(frozen=True, kw_only=True)
class Projection:
    from_: str = opt(doc="Source model (the large one).", yaml="from")
    to: str = opt(doc="Destination model (the small one).")
    type: str = opt(
        "linear",
        doc="Projection kind: `linear` (one matrix), `mlp` (two layers, gelu between), "
        "`lowrank` (one matrix of rank `hidden`, as two factors).",
        enum=list(PROJECTION_KINDS),
    )
    per_layer: bool = opt(True, doc="One projection per wired layer (else one shared).")
    init: str = opt(
        "random",
        doc="`random`, or `identity` (linear between equal widths): the small layer starts "
        "by reading the large model's residual vectors as they are.",
        enum=["random", "identity"],
    )
    bias: bool = opt(False, doc="Add a bias.")
    hidden: int = opt(
        0,
        doc="Inner width of the kinds that have one (`mlp`: its hidden layer; `lowrank`: the "
        "rank).",
        minimum=0,
        maximum=16 * MAX_WIDTH,
    )


@dataclass(frozen=True, kw_only=True)
class Wiring:
    query: str = opt(doc="The small model whose attention reads the memory.")
    kind: str = opt(
        "tandem", doc="`tandem`, or `none` for an independent model.", enum=["tandem", "none"]
    )
    memory: str | None = opt(None, doc="The large model read by `query`.")
    via: str | None = opt(None, doc="The projection (a key of `projections`).")
    layers: str | None = opt(
        None,
        doc='Layer map, e.g. "small[0:2] <- large[4:8:2]" (default: proportional).',
        layer_map=True,
    )
    block: int = opt(2, doc="Training block length gamma.", minimum=1)
    block_max: int | None = opt(
        None, doc="Sample the block length per sequence from [block, block_max].", minimum=1
    )
    random_offset: bool = opt(False, doc="Shift the block grid by a random offset per sequence.")
    fuse: int | None = opt(
        None,
        doc="Feature input (as EAGLE's drafter): the memory model's layer-`fuse` state (0 = "
        "embeddings, n_layers = its last layer) at the last position it has processed, "
        "mapped by its own linear map, RMS-normalized and scaled by a learned gain (zero at "
        "init), is added to the query model's input at every position. Needs every query "
        "layer wired.",
        minimum=0,
    )
    predict: float | None = opt(
        None,
        doc="Memory prediction (as EAGLE's feature prediction): at the positions past the "
        "frontier (drafts the memory model has not processed yet) every wired query layer "
        "reads a memory vector that the query model predicts from its own last state (a "
        "linear map per wired layer), in place of its own keys and values. The value weighs "
        "the training loss that regresses the prediction onto the projected memory (0: learned "
        "through the token loss alone). Training runs the query model block_max times per "
        "step (all but the last without gradients), so that every draft sees the predictions "
        "decoding gives it. Needs every query layer wired.",
        minimum=0,
    )


@dataclass(frozen=True, kw_only=True)
class Objective:
    kind: str = opt(
        "ce",
        doc="`ce` (Tandem-CE / LM) or `distil` (Tandem-Distil).",
        enum=list(OBJECTIVE_KINDS),
    )
    model: str | None = opt(None, doc="The model being trained (default: first trainable).")
    teacher: str | None = opt(None, doc="Teacher model for `distil`.")
    weight: float = opt(0.5, doc="Distillation weight w.", minimum=0, maximum=1)
    temperature: float = opt(1.0, doc="Teacher temperature.", minimum=0.01)
    draft_vocab: int = opt(
        0,
        doc="Train for the first N token ids only (0 = all), the ids a drafter with "
        "decode.draft_vocab N proposes: the model's output layer is cut to N rows (cheaper "
        "steps), the teacher's distribution is renormalized over those ids, and positions "
        "whose target lies past them are not counted in the loss.",
        minimum=0,
    )


@dataclass(frozen=True, kw_only=True)
class Optimizer:
    kind: str = opt("adamw", doc="Optimizer.", enum=["adamw", "adam", "sgd"])
    lr: float = opt(3e-3, doc="Peak learning rate.", minimum=0)
    warmup: int = opt(0, doc="Linear warm-up steps.", minimum=0)
    schedule: str = opt("cosine", doc="Decay after warm-up.", enum=["cosine", "linear", "constant"])
    weight_decay: float = opt(0.0, doc="Decoupled weight decay.", minimum=0)
    clip: float = opt(1.0, doc="Global-norm gradient clipping (0 = off).", minimum=0)
    b1: float = opt(0.9, doc="Adam beta1.", minimum=0, maximum=1)
    b2: float = opt(0.95, doc="Adam beta2.", minimum=0, maximum=1)


@dataclass(frozen=True, kw_only=True)
class TeacherCache:
    batches: int = opt(
        doc="Batches the frozen model is run over once and stored; the stage cycles through them "
        "(in a new order each pass) for its steps.",
        minimum=1,
        default_fn=_default_cache_batches,
    )
    top_k: int = opt(64, doc="Teacher logits kept per token (the distillation target is their "
        "softmax, renormalised).", minimum=1, maximum=1024)  # fmt: skip
    noise: float = opt(
        0.0,
        doc="Uniform noise added to the stored hidden states while training, as a fraction of "
        "each vector's RMS (EAGLE's feature noise; 0 = off).",
        minimum=0,
        maximum=1,
    )


@dataclass(frozen=True, kw_only=True)
class Scale:
    remat: str = opt(
        "none",
        doc="Recompute each layer's activations in the backward pass instead of keeping them: "
        "none; full (keep only each layer's input); dots (keep the matmul outputs, recompute "
        "the rest). Less memory, more compute.",
        enum=["none", "full", "dots"],
    )
    grad_accum: int = opt(
        1,
        doc="Split each batch into this many micro-batches (rows i, i+n, ...) run one after "
        "another, and apply their mean gradient once: the memory of batch / grad_accum rows.",
        minimum=1,
    )
    scan_layers: bool = opt(
        False,
        doc="Run the layers of a plain (non-Tandem) stack as one lax.scan over stacked weights: "
        "one layer in the program, traced once. Decoding stays unrolled (faster on CPU).",
    )
    attention: str = opt(
        "xla",
        doc="Causal self-attention in training: xla (masked einsums) or fused "
        "(jax.nn.dot_product_attention, the platform's fused kernel where it has one).",
        enum=["xla", "fused"],
    )


@dataclass(frozen=True, kw_only=True)
class TrainStage:
    name: str = opt(doc="Stage name (also its checkpoint folder).")
    trainable: list[str] = opt(doc="Models and projections that receive gradients.")
    steps: int = opt(doc="Optimizer steps.", minimum=1)
    objective: Objective = opt(factory=Objective, doc="The loss.")
    optimizer: Optimizer = opt(factory=Optimizer, doc="The optimizer.")
    batch: int = opt(8, doc="Sequences per step.", minimum=1, maximum=MAX_BATCH)
    seq_len: int = opt(
        doc="Tokens per sequence.", minimum=2, maximum=MAX_TOKENS, default_expr="${data.seq_len}"
    )
    eval_every: int = opt(100, doc="Evaluate every N steps.", minimum=1)
    eval_batches: int = opt(4, doc="Validation batches per evaluation.", minimum=1)
    checkpoint_every: int = opt(100, doc="Checkpoint every N steps.", minimum=1)
    seed: int = opt(0, doc="Seed of init and dropout-free noise.", minimum=0)
    teacher_cache: TeacherCache | None = opt(
        None,
        doc="Run the stage's frozen model (its teacher, or the large model a Tandem model reads) "
        "once over the training batches and store what the loss needs (the wired layers' hidden "
        "states in 16 bits, the top-k logits) in the run directory; the steps then read the "
        "store instead of running it. Stages with the same teacher, data, batch and seq_len share "
        "one store; it is extended when a stage needs more batches.",
    )
    scale: Scale = opt(
        factory=Scale,
        doc="How the step runs on big models (remat, gradient accumulation, scanned layers, "
        "fused attention): memory and compile time, not the result; a stage may resume with "
        "other settings.",
    )


@dataclass(frozen=True, kw_only=True)
class Sampling:
    temperature: float = opt(0.0, doc="0 = greedy.", minimum=0)
    top_k: int = opt(0, doc="Keep the k most likely tokens (0 = off).", minimum=0)
    top_p: float = opt(1.0, doc="Nucleus mass (1 = off).", exclusive_minimum=0, maximum=1)
    seed: int = opt(0, doc="Sampling seed.", minimum=0)


@dataclass(frozen=True, kw_only=True)
class NgramDraft:
    kind: str = opt("ngram", doc="Prompt-lookup drafts copied from the context.", enum=["ngram"])
    n: int = opt(3, doc="Match length.", minimum=1)


@dataclass(frozen=True, kw_only=True)
class Adaptive:
    rule: str = opt(
        "threshold",
        doc="Stop rule: threshold (the paper's: router's predicted acceptance >= threshold), "
        "expected_gain (router + measured costs), confidence (M_S's top probability >= "
        "threshold), margin (M_S's top probability leads the second by >= threshold), "
        "heuristic (+2/-1: grow the draft budget by 2 after a fully accepted round, shrink it "
        "by 1 otherwise), fixed (gamma drafts).",
        enum=list(STOP_RULES),
    )
    router: str = opt("mlp", doc="Router kind.", enum=["mlp"])
    hidden: int = opt(64, doc="Router hidden width.", minimum=1)
    activation: str = opt(
        "gelu", doc="Router hidden activation.", enum=["gelu", "relu", "silu", "tanh"]
    )
    top_k: int = opt(4, doc="Top-k probabilities fed to the router.", minimum=1)
    threshold: float = opt(
        0.8, doc="Keep drafting while predicted acceptance >= this.", minimum=0, maximum=1
    )
    max_gamma: int = opt(16, doc="Longest draft.", minimum=1)


@dataclass(frozen=True, kw_only=True)
class Decode:
    policy: str = opt(
        doc="Decoding policy.", enum=["autoregressive", "standalone", "speed", "adaptive"]
    )
    target: str | None = opt(None, doc="The large (verifying) model.")
    draft: str | NgramDraft | None = opt(None, doc="Drafter: a model name or {kind: ngram, n: 3}.")
    gamma: int = opt(4, doc="Draft / block length.", minimum=1)
    draft_vocab: int = opt(
        0,
        doc="Draft only token ids below this (0 = the whole vocabulary): the draft model's "
        "output layer shrinks to these rows; verification stays lossless (speed, adaptive).",
        minimum=0,
    )
    lookup: int = opt(
        0,
        doc="Hybrid drafting (speed, adaptive; a model draft): n > 0 looks up the last n tokens "
        "in the context first each round; rows where all n occur earlier draft what followed "
        "them, the draft model drafts the other rows and does not run when every row matched "
        "(0 = off). Lossless.",
        minimum=0,
    )
    lookup_min: int = opt(
        0,
        doc="Hybrid drafting: the shortest match (1..lookup) that drafts by lookup; a round "
        "with a shorter one drafts with the model (0 = lookup: only a match of all n tokens).",
        minimum=0,
    )
    lookup_gamma: int = opt(
        0,
        doc="Hybrid drafting: drafts per lookup round (0 = gamma). Copied drafts cost nothing to "
        "make, so where verifying a few more tokens is cheap (an accelerator) a lookup round "
        "may draft more than the model's gamma (speed: the verify pass is compiled for both "
        "lengths; adaptive: at most max_gamma).",
        minimum=0,
    )
    backend: str = opt(
        "auto",
        doc="Backend of decoding's mat-muls and cache attention: `kernel` (CPU kernels, built "
        "from source on first use: verifying k tokens costs about one step), `xla` (XLA's "
        "dots), or `auto` "
        "(the kernel on a single CPU device when it builds, else xla).",
        enum=["auto", "xla", "kernel"],
    )
    free_token: bool = opt(True, doc="Standalone: start M_S from the large model's next token.")
    adaptive: Adaptive | None = opt(None, doc="Adaptive block length settings.")
    sampling: Sampling = opt(factory=Sampling, doc="Sampling settings.")
    max_new_tokens: int = opt(
        64, doc="Tokens to generate per prompt.", minimum=1, maximum=MAX_TOKENS
    )
    stop_at_eos: bool = opt(True, doc="Stop a row at the tokenizer's end-of-sequence token.")


@dataclass(frozen=True, kw_only=True)
class Bench:
    gammas: list[int] = opt(
        factory=lambda: [2, 4, 6, 8],
        doc="Draft lengths of the fixed-gamma rows (decode.draft, and the drafter when given).",
    )
    drafter: str | None = opt(
        None, doc="An independent drafter model for the standard-SPEED rows (null = none)."
    )
    prompt_lookup: int = opt(3, doc="n of the prompt-lookup row (0 = no such row).", minimum=0)
    code_prompts: int = opt(
        4, doc="Prompts cut from held-out corpus files (the validation split).", minimum=0
    )
    chat_prompts: list[str] = opt(
        factory=list, doc="User messages, each wrapped in the tokenizer's chat template."
    )
    prompt_file: str | None = opt(
        None,
        doc='A JSONL file of more prompts, one per line: `{"prompt": "..."}` (used as it is) or '
        '`{"messages": [{"role": ..., "content": ...}, ...]}` (in the tokenizer\'s chat '
        'template, ready for the reply), with an optional `"kind"` (the class the table gives '
        'a speedup column; default "text" or "chat").',
    )
    repeats: int = opt(2, doc="Timed runs of each prompt; the fastest counts.", minimum=1)


@dataclass(frozen=True, kw_only=True)
class Shapes:
    batch: int = opt(1, doc="Decode batch size.", minimum=1, maximum=MAX_BATCH)
    max_len: int = opt(
        512, doc="KV-cache length (prompt + generation).", minimum=2, maximum=MAX_TOKENS
    )


@dataclass(frozen=True, kw_only=True)
class Mesh:
    data: int = opt(-1, doc="Data-parallel axis size (-1 = the rest).", minimum=-1)
    model: int = opt(1, doc="Model-parallel axis size (-1 = the rest).", minimum=-1)


@dataclass(frozen=True, kw_only=True)
class Spec:
    tandem: int = opt(doc="Spec language version.", minimum=1)
    name: str = opt(doc="Spec name (also the default run directory).")
    models: dict[str, Decoder] = opt(doc="Models by name.")
    include: list[str] = opt(factory=list, doc="Files merged under this one, in order.")
    data: Data = opt(factory=Data, doc="Training data.")
    tokenizer: Tokenizer = opt(factory=Tokenizer, doc="Tokenizer.")
    projections: dict[str, Projection] = opt(factory=dict, doc="Projections by name.")
    wiring: list[Wiring] = opt(factory=list, doc="How small models read large ones.")
    train: list[TrainStage] = opt(factory=list, doc="Training stages, in order.")
    decode: Decode | None = opt(None, doc="Decoding policy.")
    bench: Bench | None = opt(
        None, doc="`tandemc run SPEC bench`: every decoding method side by side (see Bench)."
    )
    shapes: Shapes = opt(factory=Shapes, doc="Compiled shapes.")
    mesh: Mesh = opt(factory=Mesh, doc="Device mesh.")
    sharding: list[list[str | None]] = opt(
        factory=list, doc="Logical-axis rules [[logical, mesh axis or null], ...]; first wins."
    )
