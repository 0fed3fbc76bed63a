"""Shared test setup: a private pretrained-weights cache and one torch thread."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def mixq_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point ``MIXQ_CACHE_DIR`` at a fresh temporary folder (never the user's ~/.cache/mixq) and use
    one torch thread (the tests run alongside other work, and results stay deterministic)."""
    cache = tmp_path_factory.mktemp("mixq-cache")
    old_env = os.environ.get("MIXQ_CACHE_DIR")
    old_threads = torch.get_num_threads()
    os.environ["MIXQ_CACHE_DIR"] = str(cache)
    torch.set_num_threads(1)
    yield cache
    torch.set_num_threads(old_threads)
    if old_env is None:
        os.environ.pop("MIXQ_CACHE_DIR", None)
    else:
        os.environ["MIXQ_CACHE_DIR"] = old_env
