"""The workload interface: what the search needs from a model and its data.

A user workload is a Python entry point ``package.module:factory``; ``factory(**options)``
returns a :class:`Workload`.  Example (``tests/search/user_workload.py`` is a runnable one)::

    def make_workload(seed: int = 0) -> Workload:
        model = MyNet(); model.load_state_dict(torch.load("mynet.pt", weights_only=True))
        return Workload(
            name="mynet", model=model, example_inputs=(torch.zeros(1, 3, 32, 32),),
            train_batches=lambda gen: my_infinite_batches(gen),
            calibration_batches=first_few_batches, loss_fn=F.cross_entropy,
            evaluate=my_accuracy, metric="accuracy", higher_is_better=True, lr=1e-4,
        )
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from search.errors import QuantizationError
from search.errors import WorkloadError as WorkloadError
from search.errors import WorkloadTypeError as WorkloadTypeError
from search.quant.attention import prepare_model

Batch = tuple[Tensor, Tensor]
T = TypeVar("T")




def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def call_user_code(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, with any exception but a :class:`WorkloadError` turned into one
    that names ``what`` (the hook or field) and the first line of the cause; the original stays
    attached as ``__cause__`` for a debugging traceback."""
    try:
        return fn(*args, **kwargs)
    except WorkloadError:
        raise
    except Exception as exc:
        raise WorkloadError(f"{what}: raised {_first_line(exc)}") from exc


def random_batches(inputs: Tensor, targets: Tensor, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
    """An endless stream of ``batch_size`` examples drawn uniformly with replacement (reproducible
    for a generator's seed): a workload's ``train_batches`` over an in-memory dataset."""
    while True:
        idx = torch.randint(0, len(targets), (batch_size,), generator=gen)
        yield inputs[idx], targets[idx]


@dataclass(frozen=True)
class Architecture:
    """A built-in workload's fp32 network, untrained, and example inputs of the shape its workload uses:
    enough for layer discovery (the layers, their order and kinds) with no data and no training."""

    model: nn.Module
    example_inputs: tuple[Any, ...]


@dataclass
class Workload:
    name: str
    model: nn.Module  # the pretrained fp32 model; the search deep-copies it per trial
    example_inputs: tuple[Any, ...]  # batch of 1, used for layer discovery and costs
    train_batches: Callable[[torch.Generator], Iterator[Batch]]  # endless (inputs, target) stream
    calibration_batches: Sequence[Batch]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    evaluate: Callable[[nn.Module], float]  # the metric on held-out data; model in eval mode
    metric: str  # "accuracy", "psnr_db", ...
    higher_is_better: bool = True
    lr: float = 1e-4  # QAT learning rate (Adam)
    # the best value the metric can take (1.0 for accuracy), if bounded: once the cheapest map
    # scores it, no other map can join the front and the search stops
    metric_best: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise WorkloadTypeError(f"model: expected torch.nn.Module, got {type(self.model).__name__}")
        if not isinstance(self.example_inputs, tuple):
            raise WorkloadTypeError(
                "example_inputs: expected a tuple of positional inputs, e.g. (x,), "
                f"got {type(self.example_inputs).__name__}"
            )
        if not self.calibration_batches:
            raise WorkloadError("calibration_batches: at least one batch is needed")
        if not self.lr > 0:
            raise WorkloadError(f"lr: must be > 0, got {self.lr}")
        # where a user model enters: nn.MultiheadAttention becomes Linears (in place), so the layer list,
        # the fake-quant swap, the qconfig and the export all see its projections
        try:
            prepare_model(self.model)
        except QuantizationError as exc:
            raise WorkloadError(f"model: {exc}") from None

    def check_example_inputs(self) -> None:
        """Run the model once on ``example_inputs`` (eval mode, no grad; the training flag is
        restored): a :class:`WorkloadError` naming ``example_inputs`` if the model fails on them."""
        shapes = ", ".join(
            str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__ for t in self.example_inputs
        )
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                call_user_code(f"example_inputs: the model fails on them ({shapes})", self.model, *self.example_inputs)
        finally:
            self.model.train(was_training)
