"""Scale-out: a device mesh from the spec's `mesh`, NamedShardings from its
`sharding` rules over the logical axis names of `compiler.nn.logical_axes`.

One code path for one device and many: a single device is a 1x1 mesh.

    sh = Sharder.for_run(prog)                    # the machine's devices (or all hosts')
    state = sh.put(state, sh.train_state(prog, stage, state))
    sh = Sharder.for_compile(prog)                # abstract devices when the mesh is bigger

Rules map a logical axis to a mesh axis (or null = replicated); for each dimension the first
rule naming its logical axis wins, skipping rules whose mesh axis the array already uses or
that do not divide the dimension (those dimensions are replicated and reported in `notes`).
A parameter with a logical axis that no rule names is an error, never silently replicated.
An empty rule list means `DEFAULT_RULES`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .errors import InputError
from .ir import MeshIR, ProgramIR, TrainStageIR

MESH_AXES = ("data", "model")

# Data parallel over `data`; attention heads, MLP width and vocabulary over `model`
# (Megatron-style); the residual width, sequence and head_dim replicated.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("mlp", "model"),
    ("vocab", "model"),
    ("embed", None),
    ("length", None),
    ("head_dim", None),
)


class ShardingError(InputError):
    """An impossible mesh or a parameter the sharding rules do not cover."""


def mesh_sizes(mesh: MeshIR, n_devices: int) -> dict[str, int]:
    """{axis: size} with one -1 resolved to the rest of `n_devices`; ShardingError when the
    mesh cannot use exactly `n_devices` devices."""
    sizes = dict(mesh.axes)
    shown = " x ".join(f"{a}={s}" for a, s in sizes.items())
    bad = [a for a, s in sizes.items() if s == 0 or s < -1]
    if bad:
        raise ShardingError(f"mesh {shown}: axis sizes must be >= 1 or -1 (the rest)")
    rest = [a for a, s in sizes.items() if s == -1]
    if len(rest) > 1:
        raise ShardingError(f"mesh {shown}: at most one axis may be -1 (the rest)")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if rest:
        if n_devices % fixed:
            raise ShardingError(
                f"mesh {shown} needs a multiple of {fixed} devices, but there are {n_devices}; "
                f"change mesh sizes so that they divide {n_devices}"
            )
        sizes[rest[0]] = n_devices // fixed
    elif fixed != n_devices:
        raise ShardingError(
            f"mesh {shown} needs {fixed} devices, but there are {n_devices}; set one axis to "
            f"-1 (the rest) or sizes whose product is {n_devices}"
            + ("; `tandemc compile` checks bigger meshes on abstract devices" if fixed > n_devices
               else "")
        )  # fmt: skip
    return sizes


def make_mesh(mesh: MeshIR, devices=None) -> Mesh:
    """A concrete `jax.sharding.Mesh` over `devices` (default: every device of every host)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_sizes(mesh, len(devices))
    shape, names = tuple(sizes.values()), tuple(sizes)
    try:  # jax.make_mesh orders devices for the hardware topology (TPU/GPU)
        return jax.make_mesh(shape, names, (AxisType.Auto,) * len(shape), devices=devices)
    except Exception:
        return Mesh(np.array(devices).reshape(shape), names)


def abstract_mesh(mesh: MeshIR, n_devices: int) -> AbstractMesh:
    """Devices that need not exist: for lowering and export of pod-sized meshes."""
    sizes = mesh_sizes(mesh, n_devices)
    return AbstractMesh(tuple(sizes.values()), tuple(sizes))


def compile_devices(mesh: MeshIR, local: int) -> int:
    """Devices `tandemc compile` targets: the local ones, or the spec's fixed mesh when that
    is bigger (a -1 axis then counts 1)."""
    fixed = math.prod(s for _, s in mesh.axes if s != -1)
    return fixed if fixed > local else local


def rules_of(mesh: MeshIR) -> tuple[tuple[str, str | None], ...]:
    return tuple(mesh.rules) or DEFAULT_RULES


def _path_name(path) -> str:
    parts = []
    for entry in path:
        key = getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", None)))
        parts.append(str(key))
    return "/".join(parts)


@dataclass
class Sharder:
    """Shardings of a program's pytrees on one mesh (concrete or abstract)."""

    mesh: Mesh | AbstractMesh
    rules: tuple[tuple[str, str | None], ...]
    notes: list[str] = field(default_factory=list)  # dims replicated despite a rule

    @classmethod
    def for_run(cls, prog: ProgramIR, devices=None) -> Sharder:
        return cls(make_mesh(prog.mesh, devices), rules_of(prog.mesh))

    @classmethod
    def for_compile(cls, prog: ProgramIR, n_devices: int | None = None) -> Sharder:
        """The local devices when the mesh fits them, else abstract devices."""
        local = jax.devices()
        n = n_devices or compile_devices(prog.mesh, len(local))
        if n == len(local):
            return cls.for_run(prog, local)
        return cls(abstract_mesh(prog.mesh, n), rules_of(prog.mesh))

    @property
    def sizes(self) -> dict[str, int]:
        return dict(self.mesh.shape)

    @property
    def n_devices(self) -> int:
        return math.prod(self.sizes.values())

    @property
    def abstract(self) -> bool:
        return isinstance(self.mesh, AbstractMesh)

    def describe(self) -> str:
        mesh = " x ".join(f"{a}={s}" for a, s in self.sizes.items())
        kind = "abstract devices" if self.abstract else f"{jax.devices()[0].platform} devices"
        return f"mesh {mesh} ({self.n_devices} {kind})"

    # --- logical axes -> PartitionSpec ------------------------------------------------------

    def spec(self, axes: tuple[str | None, ...], shape: tuple[int, ...], name: str) -> P:
        """PartitionSpec of an array with logical `axes` (None = never sharded)."""
        used: set[str] = set()
        out: list[str | None] = []
        for logical, dim in zip(axes, shape, strict=True):
            if logical is None:
                out.append(None)
                continue
            matching = [m for lg, m in self.rules if lg == logical]
            if not matching:
                raise ShardingError(
                    f"parameter {name}: logical axis '{logical}' matches no sharding rule; add "
                    f"a rule such as [{logical}, model] or [{logical}, null] (replicated) to "
                    "the spec's `sharding` list"
                )
            chosen = None
            for m in matching:
                if m is None:
                    break
                size = self.sizes.get(m, 1)
                if m not in used and dim % size == 0:
                    chosen = m
                    break
                if m not in used and size > 1:
                    self.notes.append(
                        f"{name}: {logical}={dim} is not divisible by {m}={size}, replicated"
                    )
            if chosen is not None:  # size-1 axes kept: the same layout on every mesh
                used.add(chosen)
                out.append(chosen)
            else:
                out.append(None)
        while out and out[-1] is None:
            out.pop()
        return P(*out)

    def named(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    @property
    def replicated(self) -> NamedSharding:
        return self.named(P())

    def _from_axes(self, tree, prefix: str):
        """NamedShardings for a params or cache tree; every uncovered leaf is reported at
        once (a ShardingError naming them)."""
        from .nn import logical_axes

        errors: list[str] = []

        def one(path, axes, x):
            try:
                return self.named(self.spec(axes, x.shape, _join(prefix, path)))
            except ShardingError as e:
                errors.append(str(e))
                return None

        axes = logical_axes(tree)
        out = jax.tree_util.tree_map_with_path(
            one,
            axes,
            tree,
            is_leaf=lambda a: isinstance(a, tuple) and all(isinstance(s, str | None) for s in a),
        )
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise ShardingError(errors[0] + more)
        return out

    # --- pytrees ------------------------------------------------------------------------------

    def params(self, params: dict) -> dict:
        """{model or projection name: tree of NamedSharding}, as `nn.init_params` builds."""
        return {name: self._from_axes(tree, name) for name, tree in params.items()}

    def cache(self, cache, name: str = "cache"):
        """A KV cache (list of {"k", "v"} [B, S, K, E]): batch over data, kv_heads over model."""
        if cache is None:
            return None
        return self._from_axes(cache, name)

    def tokens(self, shape: tuple[int, ...]) -> NamedSharding:
        """Token batches [B, T] (or [B]): batch over data."""
        axes = ("batch", "length")[: len(shape)]
        return self.named(self.spec(axes, shape, "batch"))

    def rows(self, shape: tuple[int, ...]) -> NamedSharding:
        """Any per-example array [B, ...] of a batch: its rows over data, like the tokens."""
        first = tuple(self.tokens(shape[:1]).spec)[:1] or (None,)
        return self.named(P(*first, *(None,) * (len(shape) - 1)))

    def train_state(self, prog: ProgramIR, stage: TrainStageIR, state: dict) -> dict:
        """`compiler.train.init_train_state`'s dict: params and frozen by the rules, optimizer
        state leaves like the parameter they mirror, counters replicated."""
        params = self.params(state["params"])
        by_path = {
            _dict_keys(path): (leaf.shape, sh)
            for (path, leaf), sh in zip(
                jax.tree_util.tree_leaves_with_path(state["params"]),
                jax.tree.leaves(params),
                strict=True,
            )
        }

        def opt_leaf(path, leaf):
            found = by_path.get(_dict_keys(path))
            if found is not None and found[0] == leaf.shape:
                return found[1]
            if leaf.ndim:
                self.notes.append(
                    f"{stage.name}: optimizer state {_path_name(path)} mirrors no parameter, "
                    "replicated"
                )
            return self.replicated

        return {
            "step": self.replicated,
            "params": params,
            "frozen": self.params(state["frozen"]),
            "opt_state": jax.tree_util.tree_map_with_path(opt_leaf, state["opt_state"]),
        }

    # --- placing and constraining ------------------------------------------------------------

    def put(self, tree, shardings):
        """Host or single-device arrays -> global arrays with `shardings` (every process holds
        the same full values, as with a shared seed or checkpoint). An array spread over
        several processes (a previous stage's result) is copied onto its new sharding."""

        def one(x, s):
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                return jax.device_put(x, s, may_alias=False)
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

        return jax.tree.map(one, tree, shardings)

    def local_batch_rows(self, batch: int) -> np.ndarray:
        """The rows of a global batch of `batch` rows (split over data like the tokens) that
        this process's devices hold, ascending: the part its data loader supplies. All of
        them with one process."""
        held: set[int] = set()
        for index in self.tokens((batch,)).addressable_devices_indices_map((batch,)).values():
            held.update(range(batch)[index[0]])
        return np.array(sorted(held), np.int64)

    @staticmethod
    def put_batch(tree, shardings, batch: int):
        """A batch's host arrays -> global arrays of `batch` rows. Each leaf holds either this
        process's rows (`local_batch_rows`, the other processes supply the rest) or every row
        (the same on every process)."""

        def one(x, s):
            x = np.asarray(x)
            return jax.make_array_from_process_local_data(s, x, (batch, *x.shape[1:]))

        return jax.tree.map(one, tree, shardings)

    @staticmethod
    def constrain(tree, shardings):
        return jax.tree.map(jax.lax.with_sharding_constraint, tree, shardings)

    @staticmethod
    def abstract_args(tree, shardings):
        """ShapeDtypeStructs carrying shardings (jit's in_shardings when lowering)."""
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
        )

    # --- reports -------------------------------------------------------------------------------

    def report(self, params: dict, shardings: dict) -> list[dict]:
        """Per parameter group (model or projection, then leaf kind with layers folded):
        shape, logical axes, PartitionSpec, total and per-device bytes."""
        from .nn import logical_axes

        rows: dict[tuple[str, str], dict] = {}
        for name, tree in params.items():
            axes = logical_axes(tree)
            flat = jax.tree_util.tree_leaves_with_path(tree)
            for (path, x), a, s in zip(
                flat,
                jax.tree.leaves(axes, is_leaf=lambda t: isinstance(t, tuple)),
                jax.tree.leaves(shardings[name]),
                strict=True,
            ):
                group = re.sub(r"layers_\d+", "layers_*", _path_name(path))
                nbytes = x.size * jnp.dtype(x.dtype).itemsize
                row = rows.setdefault(
                    (name, group),
                    {"part": name, "group": group, "count": 0, "shape": list(x.shape),
                     "axes": list(a), "spec": _spec_str(s.spec), "bytes": 0,
                     "device_bytes": 0},
                )  # fmt: skip
                row["count"] += 1
                row["bytes"] += nbytes
                row["device_bytes"] += self.device_bytes(x, s)
        return list(rows.values())

    def device_bytes(self, x, sharding: NamedSharding) -> int:
        """Bytes of one device's shard of `x`."""
        split = 1
        for entry in sharding.spec:
            for axis in (entry,) if isinstance(entry, str) else (entry or ()):
                split *= self.sizes[axis]
        return x.size * jnp.dtype(x.dtype).itemsize // split

    def tree_device_bytes(self, tree, shardings) -> int:
        return sum(
            self.device_bytes(x, s)
            for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True)
        )


def _dict_keys(path) -> tuple[str, ...]:
    """The trailing run of dict keys of a path (an optimizer state leaf's parameter path)."""
    out: list[str] = []
    for entry in reversed(path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break
        out.append(str(entry.key))
    return tuple(reversed(out))


def _join(prefix: str, path) -> str:
    rest = _path_name(path)
    return f"{prefix}/{rest}" if rest else prefix


def _spec_str(spec: P) -> str:
    return "P(" + ", ".join("None" if e is None else repr(e) for e in spec) + ")"


# What `jax.distributed.initialize` does not read itself (it reads JAX_COORDINATOR_ADDRESS and
# the cluster's own variables on TPU pods, SLURM, Open MPI and Kubernetes).
PROCESS_ENV = {"JAX_NUM_PROCESSES": "num_processes", "JAX_PROCESS_ID": "process_id"}


def distributed_args(environ=os.environ) -> dict[str, int]:
    """The process count and id given in the environment, as initialize's arguments."""
    out = {}
    for name, arg in PROCESS_ENV.items():
        text = environ.get(name, "").strip()
        if not text:
            continue
        if not text.isdigit():
            raise InputError(f"{name}={text!r}: give a whole number")
        out[arg] = int(text)
    return out


def maybe_initialize_distributed(enabled: bool) -> bool:
    """`jax.distributed.initialize()` from the environment: JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID, or the cluster's own variables (TPU pods, SLURM,
    Open MPI, Kubernetes). Must run before anything touches the devices. Returns whether it
    ran."""
    if not enabled:
        return False
    if not jax.distributed.is_initialized():
        jax.distributed.initialize(**distributed_args())
    return True
