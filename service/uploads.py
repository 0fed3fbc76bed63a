"""Uploaded models (fp32 ONNX) and datasets (``.npz``): checks that never evaluate, unpickle or generate
code from the upload, run in a sandboxed child process (:mod:`service.sandbox`), and the ``Workload`` a job
builds from them.

Why no ``.pt2`` (``torch.export``) any more: ``torch.export.load`` hands the program's symbolic shape
expressions to ``sympy.sympify`` (``eval``) and writes names from the program into FX-generated Python
source; a crafted archive ran code while the upload was still being checked, or at the first forward in
the worker.  No allow-list of members makes that loader safe, so ``.pt2`` is refused with a pointer to
ONNX, which :mod:`search.quant.onnx_import` turns into a module without evaluating or generating anything.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from numpy.lib import format as npy_format

from service.sandbox import SandboxFailure, SandboxLimits, run_sandboxed

if TYPE_CHECKING:
    from torch import nn

    from search import LayerGraph, OnnxModule, Workload

# torch and search are imported where they are used: the sandboxed dataset check then starts in about a
# second instead of waiting for torch's import.

_ZIP_MAGIC = b"PK\x03\x04"
PT2_REFUSED = (
    "file: .pt2 (torch.export) archives are not accepted: torch's loader evaluates expressions and generates "
    "code from the file. Export the model to ONNX instead (torch.onnx.export(model.eval(), example_inputs, "
    "'model.onnx', opset_version=17, dynamo=False)) and upload the .onnx file"
)


class UploadError(ValueError):
    """An upload is malformed or unsafe; the message names the field and what is wrong."""


MAX_ERROR_CHARS = 2000  # an importer's message may quote a name or attribute from the file


def _sandboxed(task: str, data: bytes, limits: SandboxLimits | None) -> dict[str, Any]:
    try:
        answer = run_sandboxed(task, data, limits)
    except SandboxFailure as exc:
        raise UploadError(f"file: {exc}") from None
    if "error" in answer:
        raise UploadError(str(answer["error"])[:MAX_ERROR_CHARS])
    return dict(answer["info"])


# ---------------------------------------------------------------------------------------------
# ONNX models
# ---------------------------------------------------------------------------------------------


def load_model(data: bytes) -> OnnxModule:
    """The uploaded ONNX model as a module (safe to run in-process: search.quant.onnx_import); raises UploadError."""
    from search import OnnxImportError, load_onnx_model

    if data.startswith(_ZIP_MAGIC):
        raise UploadError(PT2_REFUSED)
    try:
        return load_onnx_model(data)
    except OnnxImportError as exc:
        raise UploadError(str(exc)) from None


MAX_LISTED_LAYERS = 1000  # layers kept in an upload's info; a larger model's requests are checked by the worker


def inspect_model_here(data: bytes) -> dict[str, Any]:
    """Layer names of an uploaded model and its layer graph (execution order, kinds, shapes: what a job's pins
    and groups are checked against at submission); what the sandboxed child runs."""
    import torch
    from torch import nn

    from search import LayerDiscoveryError, discover_layers

    module = load_model(data)
    onnx_names = module.onnx_names
    quantizable = nn.Conv1d | nn.Conv2d | nn.ConvTranspose2d | nn.Linear
    layers = [n for n, m in module.named_modules() if isinstance(m, quantizable)]
    if not layers:
        raise UploadError("file: the model has no Conv, ConvTranspose, Gemm or MatMul layer to quantize")
    try:
        graph = discover_layers(module, module.example_inputs())
    except LayerDiscoveryError as exc:
        raise UploadError(f"file: {exc}") from None
    fixed, per_sample = activation_bytes(module)
    with torch.no_grad():
        out = module(*module.example_inputs())
    info: dict[str, Any] = {
        "format": "onnx", "layers": layers[:MAX_LISTED_LAYERS], "n_layers": len(layers),
        "onnx_names": {fqn: onnx_names.get(fqn, fqn) for fqn in layers[:MAX_LISTED_LAYERS]},
        "input_shape": list(module.input_shapes[0]),
        "input_dtype": str(module.input_dtypes[0]).removeprefix("torch."),  # float32, or int64/int32 token ids
        "param_bytes": sum(p.numel() * p.element_size() for p in module.parameters())
        + sum(b.numel() * b.element_size() for b in module.buffers()),
        "activation_bytes": {"fixed": fixed, "per_sample": per_sample},
    }
    if isinstance(out, torch.Tensor):  # what a dataset's targets are checked against at submission
        info["output_shape"] = list(out.shape)
    if module.batch_axis:
        info["batch_axis"] = module.batch_axis
    if module.fixed_batch is not None:  # its graph runs at its own batch only (search.quant.onnx_import)
        info["fixed_batch"] = {"batch": module.batch_size, "reason": module.fixed_batch}
    if module.index_limit is not None:  # integer inputs index a table: ids 0..index_limit-1
        info["index_limit"] = module.index_limit
    if len(graph.layers) <= MAX_LISTED_LAYERS:
        info["graph"] = graph.as_dicts()
    # what stays float (attention's Q K^T and A V): in every trial's cost at float precision, never searched
    info["float_layers"] = [f.as_dict() for f in graph.float_layers[:MAX_LISTED_LAYERS]]
    return info


def _forward_bytes(module: OnnxModule, batch: int) -> int:
    """Bytes of the tensors one training forward at ``batch`` keeps for its backward (each storage once, the
    input's included): the activations a training step holds."""
    import torch

    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen and not isinstance(t, torch.nn.Parameter):
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return t

    shape = list(module.input_shapes[0])
    shape[module.batch_axis] = batch
    dtype = module.input_dtypes[0]
    x = torch.zeros(shape, dtype=dtype, requires_grad=dtype.is_floating_point)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)  # kept until the count is done: a freed address is not reused unseen
    del out
    return total


def activation_bytes(module: OnnxModule) -> tuple[int, int]:
    """(fixed, per sample) bytes of the tensors one forward creates, from forwards at batch 1 and 2 (a model that
    runs at its own batch only: all of one forward at that batch, per sample)."""
    if module.fixed_batch is not None:
        return 0, -(-_forward_bytes(module, module.batch_size) // module.batch_size)
    one, two = _forward_bytes(module, 1), _forward_bytes(module, 2)
    per_sample = max(0, two - one)
    return max(0, one - per_sample), per_sample


# a training step keeps each activation, its gradient and the fake-quantized copies of weights and inputs:
# a few times the saved tensors.  4 is a guess, not calibrated (the job child's RLIMIT_AS is the real wall)
TRAINING_FACTOR = 4
# per trial: the model, its fake-quant copy, gradients and Adam's two moments
PARAM_COPIES = 6


def estimated_job_bytes(model_info: dict[str, Any], dataset_info: dict[str, Any], batch_size: int) -> int | None:
    """The memory a job of this upload needs at ``batch_size``: one training batch's activations, the
    parameters' copies and the dataset as float32; None for an upload inspected before this was stored."""
    act = model_info.get("activation_bytes")
    if not isinstance(act, dict):
        graph = layer_graph_of(model_info)
        if graph is None:
            return None
        act = {"fixed": 0, "per_sample": 4 * sum(layer.output_numel + layer.input_numel for layer in graph.layers)}
    data = sum(4 * math.prod(int(d) for d in arr.get("shape", [])) for arr in dataset_info.values()
               if isinstance(arr, dict))
    params = int(model_info.get("param_bytes", 0))
    return TRAINING_FACTOR * (int(act["fixed"]) + int(act["per_sample"]) * batch_size) + PARAM_COPIES * params + data


def layer_graph_of(info: dict[str, Any]) -> LayerGraph | None:
    """The layer graph an uploaded model's inspection stored (:func:`inspect_model_here`); None for an upload
    inspected before graphs were stored, or a model too large to list."""
    from search import LayerDiscoveryError, LayerGraph

    if "graph" not in info:
        return None
    try:
        return LayerGraph.from_dicts(info["graph"])
    except LayerDiscoveryError:
        return None


_ONNX_FIRST_BYTE = b"\x08"


def inspect_model(data: bytes, limits: SandboxLimits | None = None) -> tuple[bytes, dict[str, Any]]:
    """(bytes to store, info) for an uploaded model, checked in the sandbox; raises UploadError.  The bytes are
    the upload's own: a file at opset 7-12 is converted (``onnx.version_converter``) each time it is imported,
    here in the sandbox and again where a job loads it."""
    if data.startswith(_ZIP_MAGIC):
        raise UploadError(PT2_REFUSED)  # answered here: no need to start a child to say no
    if not data.startswith(_ONNX_FIRST_BYTE):
        # protobuf writers emit fields in number order and ModelProto's field 1 is ir_version (a varint,
        # tag byte 0x08), which every valid model has: anything else is refused without a child
        raise UploadError("file: not an ONNX model (an ONNX file begins with its ir_version field); "
                          "export with torch.onnx.export(..., opset_version=17)")
    return data, _sandboxed("model", data, limits)


# ---------------------------------------------------------------------------------------------
# .npz
# ---------------------------------------------------------------------------------------------

_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
MAX_ARRAY_BYTES = 2 * 1024**3  # all arrays of one dataset together, decompressed
MAX_EXPANSION = 64  # decompressed bytes per upload byte: real data compresses far less; a bomb ~1000x
_NPY_HEADER_MAX = 64 * 1024
MAX_ABS_VALUE = 1e15  # squared (MSE) still far from float32's 3.4e38


def _read_npy_header(member: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    try:
        version = npy_format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(member, max_header_size=_NPY_HEADER_MAX)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = npy_format.read_array_header_2_0(member, max_header_size=_NPY_HEADER_MAX)
        else:
            raise ValueError(f"npy version {version}")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError) as exc:
        raise UploadError(f"file: array {name!r} has no readable .npy header ({exc})"[:300]) from None
    return tuple(shape), dtype


def check_npz_sizes(data: bytes, max_array_bytes: int = MAX_ARRAY_BYTES) -> None:
    """Refuse decompression bombs from the zip directory and the .npy headers, before any array is loaded."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise UploadError("file: not a readable .npz (zip) file; truncated?") from None
    names = [info.filename.removesuffix(".npy") for info in infos]
    unknown = sorted(set(names) - set(_ARRAYS))
    if unknown or len(names) != len(set(names)):
        raise UploadError(f"file: unexpected arrays {unknown or names}; allowed: {', '.join(_ARRAYS)} (once each)")
    declared = sum(info.file_size for info in infos)
    cap = min(max_array_bytes, MAX_EXPANSION * len(data) + 1024 * 1024)
    if declared > cap:
        raise UploadError(f"file: the arrays decompress to {declared} bytes from a {len(data)}-byte upload; "
                          f"at most {cap} bytes (decompression bomb?)")
    with archive:
        for info, name in zip(infos, names, strict=True):
            with archive.open(info) as member:
                shape, dtype = _read_npy_header(member, name)
                if dtype.hasobject:
                    raise UploadError(f"file: array {name!r} holds Python objects; numeric arrays only")
                header_bytes = member.tell()
            array_bytes = math.prod(shape) * dtype.itemsize
            if array_bytes != info.file_size - header_bytes:
                raise UploadError(f"file: array {name!r} declares shape {list(shape)} of {dtype} "
                                  f"({array_bytes} bytes) but holds {info.file_size - header_bytes} bytes")


def load_arrays(data: bytes) -> dict[str, np.ndarray]:
    """``x_train``, ``y_train`` (required), ``x_test``, ``y_test`` (optional) from an .npz, never unpickling."""
    check_npz_sizes(data)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise UploadError(f"file: not a readable .npz without pickles ({type(exc).__name__}: {exc})"[:300]) from None
    for name in ("x_train", "y_train"):
        if name not in arrays:
            raise UploadError(f"file: array {name!r} is required (have: {', '.join(arrays) or 'none'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise UploadError("file: give both x_test and y_test, or neither")
    for name, arr in arrays.items():
        if arr.dtype.kind not in "biuf":
            raise UploadError(f"file: array {name!r} has dtype {arr.dtype}; numeric arrays only")
        if arr.dtype.byteorder == ">":
            raise UploadError(f"file: array {name!r} is big-endian ({arr.dtype.str}); save little-endian arrays "
                              "(arr.astype(arr.dtype.newbyteorder('<')))")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise UploadError(f"file: array {name!r} contains NaN or inf")
        if arr.size and max(abs(float(arr.max())), abs(float(arr.min()))) > MAX_ABS_VALUE:
            raise UploadError(f"file: array {name!r} holds values beyond +-{MAX_ABS_VALUE:g}, which overflow "
                              "float32 in training; scale the data")
        if arr.ndim == 0 or arr.shape[0] < 2:
            raise UploadError(f"file: array {name!r} needs at least 2 samples along axis 0")
    for split in ("train", "test"):
        if f"x_{split}" in arrays and arrays[f"x_{split}"].shape[0] != arrays[f"y_{split}"].shape[0]:
            raise UploadError(f"file: x_{split} and y_{split} differ in length")
    return arrays


def inspect_dataset_here(data: bytes) -> dict[str, Any]:
    """Array shapes and dtypes of an uploaded dataset; what the sandboxed child runs."""
    arrays = load_arrays(data)
    info: dict[str, Any] = {}
    for name, a in arrays.items():
        info[name] = {"shape": list(a.shape), "dtype": str(a.dtype)}
        if a.dtype.kind in "biu" and a.size:  # class labels, token ids: checked against the model
            info[name] |= {"min": int(a.min()), "max": int(a.max())}
    return info


def check_dataset_fits(model_name: str, model_info: dict[str, Any], dataset_info: dict[str, Any]) -> None:
    """Raise UploadError naming the array when a dataset's samples or targets do not fit the model (from the
    stored inspections: nothing is loaded); an upload inspected before these were stored passes."""
    input_shape = model_info.get("input_shape")
    output_shape = model_info.get("output_shape")
    if model_info.get("batch_axis"):
        raise UploadError(f"dataset: model {model_name!r} takes its batch on axis {model_info['batch_axis']} of its "
                          "input; a dataset's samples are along axis 0: export the model batch-first")
    integer_input = str(model_info.get("input_dtype", "float32")).startswith("int")
    for name in ("x_train", "x_test"):
        arr = dataset_info.get(name)
        if not isinstance(arr, dict):
            continue
        if input_shape is not None and list(arr["shape"][1:]) != list(input_shape[1:]):
            raise UploadError(f"dataset: array {name!r} holds samples of shape {list(arr['shape'][1:])}; model "
                              f"{model_name!r} takes {list(input_shape[1:])} (its input is {list(input_shape)})")
        if integer_input and np.dtype(arr["dtype"]).kind not in "biu":
            raise UploadError(f"dataset: array {name!r} holds {arr['dtype']} values; model {model_name!r} takes "
                              f"{model_info['input_dtype']} ids (token ids): give an integer array")
        limit = model_info.get("index_limit")
        if integer_input and limit is not None and "min" in arr and not (arr["min"] >= 0 and arr["max"] < limit):
            raise UploadError(f"dataset: array {name!r} holds ids {arr['min']}..{arr['max']}; model {model_name!r} "
                              f"looks them up in a table of {limit}: ids 0..{limit - 1}")
    if output_shape is None:
        return
    for name in ("y_train", "y_test"):
        arr = dataset_info.get(name)
        if not isinstance(arr, dict):
            continue
        if np.dtype(arr["dtype"]).kind in "biu":  # classification: one label per sample, below the class count
            classes = output_shape[1] if len(output_shape) == 2 else None
            if classes is None or len(arr["shape"]) != 1:
                raise UploadError(f"dataset: array {name!r} holds integer labels (classification), of shape "
                                  f"{arr['shape']}; model {model_name!r} outputs {list(output_shape)}: integer labels "
                                  "need one label per sample and an output of (batch, classes)")
            if "min" in arr and not (arr["min"] >= 0 and arr["max"] < classes):
                raise UploadError(f"dataset: array {name!r} holds labels {arr['min']}..{arr['max']}; model "
                                  f"{model_name!r} has {classes} outputs: labels 0..{classes - 1}")
        elif list(arr["shape"][1:]) != list(output_shape[1:]):  # regression: targets shaped like the output
            raise UploadError(f"dataset: array {name!r} holds float targets (regression) of shape "
                              f"{list(arr['shape'][1:])} per sample; model {model_name!r} outputs "
                              f"{list(output_shape[1:])} per sample")


def check_batch_fits(model_name: str, model_info: dict[str, Any], batch_size: int) -> None:
    """Raise UploadError when the model runs at its own batch only (its graph fixes it) and ``batch_size`` is
    another."""
    fixed = model_info.get("fixed_batch")
    if isinstance(fixed, dict) and batch_size != fixed.get("batch"):
        raise UploadError(f"workload_options.batch_size: model {model_name!r} runs at batch {fixed.get('batch')} only "
                          f"({fixed.get('reason')}); give batch_size {fixed.get('batch')} or upload that export")


def inspect_dataset(data: bytes, limits: SandboxLimits | None = None) -> dict[str, Any]:
    """Array shapes and dtypes of an uploaded dataset, checked in the sandbox; raises UploadError."""
    return _sandboxed("dataset", data, limits)


# ---------------------------------------------------------------------------------------------
# The workload
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadWorkloadOptions:
    batch_size: int = 64
    lr: float = 1e-4
    calibration_batches: int = 4

    @classmethod
    def parse(cls, options: dict[str, Any]) -> UploadWorkloadOptions:
        unknown = sorted(set(options) - {"batch_size", "lr", "calibration_batches"})
        if unknown:
            raise UploadError(f"workload_options: unknown option(s) {unknown} for an uploaded model")
        parsed = cls(**options)
        if not isinstance(parsed.batch_size, int) or not 1 <= parsed.batch_size <= 4096:
            raise UploadError("workload_options.batch_size: an integer 1..4096")
        if not isinstance(parsed.lr, int | float) or not 0 < parsed.lr < 1:
            raise UploadError("workload_options.lr: a number in (0, 1)")
        if not isinstance(parsed.calibration_batches, int) or not 1 <= parsed.calibration_batches <= 64:
            raise UploadError("workload_options.calibration_batches: an integer 1..64")
        return parsed


def build_workload(name: str, model_bytes: bytes, dataset: bytes, options: dict[str, Any]) -> Workload:
    """A Workload from an uploaded ONNX model and arrays.  Integer targets: classification (cross-entropy,
    accuracy); float targets: regression (MSE, metric ``mse``, lower is better)."""
    import torch
    import torch.nn.functional as F

    from search import Workload

    opts = UploadWorkloadOptions.parse(options)
    model = load_model(model_bytes)
    arrays = load_arrays(dataset)
    in_dtype = model.input_dtypes[0]

    def inputs(arr: np.ndarray) -> torch.Tensor:  # float32, or the model's integer type for token ids
        x = torch.from_numpy(arr)
        return x.float() if in_dtype.is_floating_point else x.to(in_dtype)

    x_train = inputs(arrays["x_train"])
    y_np = arrays["y_train"]
    classify = y_np.dtype.kind in "biu"
    y_train = torch.from_numpy(y_np).long() if classify else torch.from_numpy(y_np).float()
    if "x_test" in arrays:
        x_test = inputs(arrays["x_test"])
        y_test = torch.from_numpy(arrays["y_test"]).long() if classify else torch.from_numpy(arrays["y_test"]).float()
    else:  # hold out the last fifth
        cut = max(1, len(x_train) * 4 // 5)
        x_train, x_test, y_train, y_test = x_train[:cut], x_train[cut:], y_train[:cut], y_train[cut:]

    def train_batches(gen: torch.Generator):  # type: ignore[no-untyped-def]
        while True:
            idx = torch.randint(0, len(x_train), (opts.batch_size,), generator=gen)
            yield x_train[idx], y_train[idx]

    calibration = [
        (x_train[i:i + opts.batch_size], y_train[i:i + opts.batch_size])
        for i in range(0, min(len(x_train), opts.batch_size * opts.calibration_batches), opts.batch_size)
    ]

    def evaluate(module: nn.Module) -> float:
        # in batches of batch_size: one forward over the whole test set holds every activation of every sample
        total, n = 0.0, len(x_test)
        with torch.no_grad():
            for i in range(0, n, opts.batch_size):
                out, target = module(x_test[i:i + opts.batch_size]), y_test[i:i + opts.batch_size]
                if classify:
                    total += float((out.argmax(dim=1) == target).sum())
                else:
                    total += float(F.mse_loss(out, target)) * len(target)
        return total / n

    return Workload(
        name=name, model=model, example_inputs=(x_train[:1],), train_batches=train_batches,
        calibration_batches=calibration, loss_fn=F.cross_entropy if classify else F.mse_loss,
        evaluate=evaluate, metric="accuracy" if classify else "mse", higher_is_better=classify, lr=opts.lr,
    )
