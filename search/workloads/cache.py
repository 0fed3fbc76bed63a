"""Pretrained fp32 weights of the built-in workloads: trained on first use, then cached.

Cache folder: ``$MIXQ_CACHE_DIR`` or ``~/.cache/mixq``.  Files are
:mod:`search.quant.checkpoint` files (read with ``weights_only=True``, never a full unpickle; written
atomically, so concurrent workers never read a half-written file).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.quant.checkpoint import load_checkpoint, save_state_dict


def cache_dir() -> Path:
    path = Path(os.environ.get("MIXQ_CACHE_DIR") or Path.home() / ".cache" / "mixq")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_pretrained(
    name: str, options: dict[str, Any], build: Callable[[], nn.Module], train: Callable[[], nn.Module]
) -> nn.Module:
    key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"{name}-{key}.pt"
    with torch.random.fork_rng():  # building and training draw from (and seed) torch's RNG; not the caller's
        model = build()
        if path.exists():
            model.load_state_dict(load_checkpoint(path).state_dict)
            return model.eval()
        trained = train()
    save_state_dict(trained, path)
    model.load_state_dict(trained.state_dict())
    return model.eval()
