"""Small random models built with `transformers` (no hub): Llama, and the families of
`FAMILIES` (Llama 3 RoPE scaling, Qwen2 biases, a separate head width); saved as safetensors
and as GGUF (written with `gguf.GGUFWriter` the way llama.cpp's converter does: a llama file's
Q/K rows permuted, norms in F32), and independent numpy decoders of the GGUF block formats used to
build the quantized reference models.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

D, FF, LAYERS, HEADS, KV_HEADS, THETA, EPS = 64, 160, 2, 4, 2, 50000.0, 1e-5
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"
GGUF_NAMES = {
    "embed_tokens": "token_embd",
    "norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def train_tokenizer():
    """Byte-level BPE, ~300 tokens, trained on a stdlib module's source."""
    import inspect
    import json as json_module

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([inspect.getsource(json_module.decoder)], trainer)
    return tok


# Families beyond Llama 2: (transformers config class, model class, config changes).
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    # theta 10000 puts two of the 8 frequencies between llama3's bands, one above, five below
    "llama3": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"rope_theta": 10000.0, "rope_scaling": LLAMA3_ROPE},
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "head_dim": ("LlamaConfig", "LlamaForCausalLM", {"head_dim": 32}),  # 4 x 32 != D = 64
}


def hf_model(vocab: int, tied: bool, seed: int = 0, family: str = "llama"):
    """A random model of `family` (FAMILIES), float32, with every weight (norms and biases
    too) randomized."""
    import torch
    import transformers

    config_class, model_class, changes = FAMILIES[family]
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=vocab,
        hidden_size=D,
        intermediate_size=FF,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        rope_theta=THETA,
        rms_norm_eps=EPS,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = getattr(transformers, config_class)(**(settings | changes))
    model = getattr(transformers, model_class)(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn_like(p))
            else:  # larger than HF's 0.02 init, so logits spread over several units
                p.copy_(torch.randn_like(p) * (0.5 if "embed" in name else p.shape[-1] ** -0.5))
    return model


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_divisors(model) -> np.ndarray | None:
    """What llama.cpp stores as `rope_freqs.weight` for a llama3-scaled model: the unscaled
    RoPE frequencies over the model's own (transformers') scaled ones."""
    scaling = model.config.rope_parameters.get("rope_type", "default")
    if scaling == "default":
        return None
    e, theta = head_dim(model.config), model.config.rope_parameters["rope_theta"]
    base = 1.0 / theta ** (np.arange(0, e, 2, dtype=np.float64) / e)
    return (base / model.model.rotary_emb.inv_freq.double().numpy()).astype(np.float32)


def save_hf(model, tok, folder: Path, dtype=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (copy.deepcopy(model).to(dtype) if dtype else model).save_pretrained(folder)  # .to is in place
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": SPECIALS[1], "eos_token": SPECIALS[2], "chat_template": CHAT_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.LlamaModel.permute (HF rotate-half -> GGML rows)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_name(hf_name: str) -> str:
    name = hf_name.removeprefix("model.")
    name, kind = name.rsplit(".", 1)  # weight | bias
    if name.startswith("layers."):
        _, layer, rest = name.split(".", 2)
        return f"blk.{layer}.{GGUF_NAMES[rest]}.{kind}"
    return f"{GGUF_NAMES[name]}.{kind}"


def save_gguf(model, tok, path: Path, qtype_name: str = "F32", extra: dict | None = None) -> Path:
    """Write `model` as llama.cpp's converter does: a llama GGUF (Q/K rows and biases permuted,
    llama3 RoPE divisors as rope_freqs.weight) or a qwen2 one (rows as in HF); matrices in
    `qtype_name`, norms and biases F32; `extra`: more tensors by ggml name, written as given."""
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    cfg = model.config
    arch = "qwen2" if cfg.model_type == "qwen2" else "llama"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-" + arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(head_dim(cfg))
    w.add_value_length(head_dim(cfg))
    w.add_rope_dimension_count(head_dim(cfg))
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if arch == "llama":
        w.add_vocab_size(cfg.vocab_size)  # qwen2 files leave it to token_embd
    vocab = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tok.token_to_id(SPECIALS[1]))
    w.add_eos_token_id(tok.token_to_id(SPECIALS[2]))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    tensors = dict(model.state_dict())
    if cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    divisors = rope_divisors(model)
    if divisors is not None:
        w.add_tensor("rope_freqs.weight", divisors)
    for name, t in tensors.items():
        a = t.detach().float().numpy() if hasattr(t, "detach") else np.asarray(t, np.float32)
        if arch == "llama" and "q_proj" in name:
            a = permute(a, cfg.num_attention_heads)
        elif arch == "llama" and "k_proj" in name:
            a = permute(a, cfg.num_key_value_heads)
        if a.ndim == 2 and qtype_name != "F32":
            w.add_tensor(gguf_name(name), gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gguf_name(name), a)
    for name, a in (extra or {}).items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- independent decoders of the block formats (ggml-quants.c), for the references ----------


def decode_blocks(raw: np.ndarray, qtype_name: str, shape) -> np.ndarray:
    """Bytes of a quantized [rows, cols] tensor -> float32, without gguf's dequantize."""
    rows = np.asarray(raw, np.uint8).reshape(-1)
    if qtype_name == "Q8_0":  # f16 d, 32 x int8: x = d * q
        b = rows.reshape(-1, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        q = b[:, 2:].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(shape)
    if qtype_name in ("Q4_0", "Q4_1"):  # f16 d[, f16 m], 16 bytes: low nibbles = 0..15
        head = 2 if qtype_name == "Q4_0" else 4
        b = rows.reshape(-1, head + 16)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        nib = b[:, head:]
        q = np.concatenate([nib & 0x0F, nib >> 4], axis=1).astype(np.float32)
        if qtype_name == "Q4_0":
            return (d * (q - 8.0)).reshape(shape)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        return (d * q + m).reshape(shape)
    raise ValueError(qtype_name)


def rounded(a: np.ndarray, qtype_name: str) -> np.ndarray:
    """What a float32 matrix becomes after storing it as `qtype_name` and reading it back."""
    import gguf
    import torch

    if qtype_name == "F32":
        return a
    if qtype_name == "F16":
        return a.astype(np.float16).astype(np.float32)
    if qtype_name == "BF16":
        return torch.from_numpy(a).to(torch.bfloat16).float().numpy()
    raw = gguf.quants.quantize(a, gguf.GGMLQuantizationType[qtype_name])
    return decode_blocks(raw, qtype_name, a.shape)


def quantized_reference(model, qtype_name: str, norms: bool = False):
    """A copy of `model` whose matrices (and norms if `norms`, as save_pretrained in a
    16-bit dtype does) hold what was stored as `qtype_name`. Quantization blocks run along
    rows, so they commute with the Q/K row permutation of `save_gguf`."""
    import torch

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for _, p in ref.named_parameters():
            if p.ndim == 2 or norms:
                p.copy_(torch.from_numpy(rounded(p.detach().numpy(), qtype_name)))
    return ref
