"""The values a spec leaves to its weight files, filled in before validation.

A model with `init: {from: gguf | safetensors, path: P}` may leave out every field marked
`from_weights` in `model.Decoder`: they are read from P's header (`pretrained.architecture`)
and recorded with P and the key as their origin, so `tandemc render --resolved` and
`--provenance` show them. A model without `vocab` whose weights do not set it takes the size of
a gguf / hf-json tokenizer's vocabulary. A stated value the file contradicts is reported by the
check stage (`disagreements`, at the field).

A file that cannot be read is an error here only when the spec leaves it a required field
(d_model, n_layers, n_heads); otherwise loading the weights reports it at run time, and a file
that is not there yet (before `tandemc pull`) does not stop `tandemc check`.
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache
from pathlib import Path

from . import pretrained, rope_scaling
from .diagnostics import Collector, Origin
from .model import Decoder
from .schema import fields, has_default
from .source import Doc, path_str

WEIGHT_KINDS = ("gguf", "safetensors")
TOKENIZER_KINDS = ("gguf", "hf-json")
FROM_WEIGHTS = [f.name for f in fields(Decoder) if f.metadata.get("from_weights")]
REQUIRED = [f.name for f in fields(Decoder) if f.name in FROM_WEIGHTS and not has_default(f)]


def weight_file(model: dict) -> tuple[str, str] | None:
    """(kind, path) of a model tree's weight file, when its init reads one."""
    init = model.get("init")
    if not isinstance(init, dict) or init.get("from") not in WEIGHT_KINDS:
        return None
    path = init.get("path")
    return (init["from"], path) if isinstance(path, str) and "${" not in path else None


def read_architecture(kind: str, path: str):
    """(Architecture, None) or (None, why it cannot be read); cached per file version."""
    try:
        st = Path(path).stat()
        return _architecture(kind, str(Path(path).resolve()), st.st_mtime_ns), None
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except OSError as e:
        return None, f"{path} cannot be read ({e.strerror or e})"
    except ValueError as e:
        return None, str(e)


@lru_cache(maxsize=16)
def _architecture(kind: str, path: str, mtime_ns: int):
    return pretrained.architecture(kind, path)


def fill(doc: Doc, errors: Collector) -> None:
    """Adds, in place, the model fields the spec leaves to its weight and tokenizer files."""
    models = doc.tree.get("models")
    if not isinstance(models, dict):
        return
    for name, m in models.items():
        source = weight_file(m) if isinstance(m, dict) else None
        if source is not None:
            _fill_model(doc, errors, name, m, *source)
    _fill_vocab(doc, errors, models)


def _fill_model(doc: Doc, errors: Collector, name: str, m: dict, kind: str, path: str) -> None:
    arch, problem = read_architecture(kind, path)
    if arch is None:
        missing = [f for f in REQUIRED if f not in m]
        if missing:
            at = ("models", name, "init", "path")
            errors.error(
                "E-WEIGHTS-READ",
                f"model '{name}' leaves {', '.join(missing)} to its weights, which cannot be "
                f"read: {problem}",
                doc.origin(at),
                path_str(at),
                "fix init.path (a .gguf file, or a folder with config.json), or state "
                + ", ".join(missing),
            )
        return
    where = path if kind == "gguf" else str(pretrained.hf_folder(path) / "config.json")
    for key in FROM_WEIGHTS:
        if key not in m:
            m[key] = copy.deepcopy(arch.values[key])
            doc.origins[("models", name, key)] = Origin(f"{where}: {arch.keys[key]}")


def _fill_vocab(doc: Doc, errors: Collector, models: dict) -> None:
    t = doc.tree.get("tokenizer")
    if not isinstance(t, dict) or t.get("kind") not in TOKENIZER_KINDS:
        return
    needing = [n for n, m in models.items() if isinstance(m, dict) and "vocab" not in m]
    path = t.get("path")
    if not needing or not isinstance(path, str):
        return  # the check stage asks for a missing path
    try:
        size, key = pretrained.tokenizer_vocab(t["kind"], path)
    except (OSError, ValueError) as e:
        problem = f"{path} does not exist" if isinstance(e, FileNotFoundError) else str(e)
        errors.error(
            "E-WEIGHTS-READ",
            f"the vocabulary size of {', '.join(needing)} comes from the tokenizer, which "
            f"cannot be read: {problem}",
            doc.origin(("tokenizer", "path")),
            "tokenizer.path",
            "fix tokenizer.path, or give those models `vocab:`",
        )
        return
    for name in needing:
        models[name]["vocab"] = size
        doc.origins[("models", name, "vocab")] = Origin(f"{path}: {key}")


def disagreements(stated: dict, file: dict) -> list[str]:
    """The fields (spec names) where `stated` contradicts the weight file's `file` values.
    Floats agree within 1e-4 (GGUF holds float32), head widths and RoPE scalings when they
    give the same widths and frequencies."""
    out = []
    for key in sorted(file, key=lambda k: k == "head_dim"):  # head_dim after d_model, n_heads
        value = file[key]
        if key not in stated:
            continue
        if key == "head_dim":  # null: d_model / n_heads, whose own disagreement is the cause
            cause = stated[key] is None and {"d_model", "n_heads"} & set(out)
            agree = cause or _head_dim(stated) == _head_dim(file)
        elif key == "rope_scaling":
            width, theta = _head_dim(file), file["rope_theta"]
            agree = rope_scaling.same_frequencies(
                rope_scaling.frequencies(width, theta, stated[key]),
                rope_scaling.frequencies(width, theta, value),
            )
        elif isinstance(value, float):
            agree = math.isclose(stated[key], value, rel_tol=1e-4)
        else:
            agree = stated[key] == value
        if not agree:
            out.append(key)
    return out


def shown(key: str, values: dict):
    """A value as an error message shows it (a head width as a number)."""
    return _head_dim(values) if key == "head_dim" else values[key]


def _head_dim(values: dict) -> int:
    return values["head_dim"] or values["d_model"] // values["n_heads"]
