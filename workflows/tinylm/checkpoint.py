"""Model files (.npz: parameters, the config, optimizer state) for both architectures, and
what each architecture provides to training and decoding."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tinylm import model, window

Array = np.ndarray
ModelConfig = model.Config | window.WindowConfig


class Arch(NamedTuple):
    config: type[Any]
    init: Callable[[Any, int], dict[str, Array]]
    loss_and_grads: Callable[[dict[str, Array], Any, Array], tuple[float, dict[str, Array]]]
    decoder: Callable[[dict[str, Array], Any], Any]


ARCHS = {
    "transformer": Arch(model.Config, model.init, model.loss_and_grads, model.Decoder),
    "window": Arch(window.WindowConfig, window.init, window.loss_and_grads, window.WindowDecoder),
}


def arch_of(cfg: ModelConfig) -> str:
    return "window" if isinstance(cfg, window.WindowConfig) else "transformer"


def save(
    path: Path, p: dict[str, Array], cfg: ModelConfig, extra: dict[str, Array] | None = None
) -> None:
    """Atomically: a half-written checkpoint must never be the newest one."""
    tmp = path.with_name(path.name + ".tmp.npz")
    meta = {f"cfg.{k}": np.array(v) for k, v in asdict(cfg).items()}
    np.savez(tmp, **p, **meta, arch=np.array(arch_of(cfg)), **(extra or {}))
    tmp.replace(path)


def load(path: Path) -> tuple[dict[str, Array], ModelConfig, dict[str, Array]]:
    data = np.load(path)
    # Files from before the window draft have no "arch": they hold transformers.
    arch = str(data["arch"]) if "arch" in data.files else "transformer"
    cfg = ARCHS[arch].config(**{k[4:]: int(data[k]) for k in data.files if k.startswith("cfg.")})
    params = {k: data[k] for k in data.files if not k.startswith(("cfg.", "opt.", "arch"))}
    extra = {k: data[k] for k in data.files if k.startswith("opt.")}
    return params, cfg, extra


def decoder(p: dict[str, Array], cfg: ModelConfig) -> Any:
    """A decoder (feed, rollback, n) for either architecture."""
    return ARCHS[arch_of(cfg)].decoder(p, cfg)
