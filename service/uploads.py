"""Uploaded models (``torch.export`` ``.pt2``) and datasets (``.npz``): validation that never unpickles,
and the ``Workload`` a job builds from them.

Why not just ``torch.export.load``: in torch 2.13 it ``torch.load(..., weights_only=False)``s the archive's
``data/sample_inputs/*.pt`` member and any weight/constant flagged ``use_pickle``, and ``pickle.loads`` custom
objects; a crafted member runs code.  So an archive is rebuilt from an allow-list of members first:
JSON graph and configs, raw little-endian weight/constant files and the archive's version markers.  Sample
inputs are replaced by an empty member (torch then skips them), and configs that ask for pickle, legacy
``.pt`` members, unknown members, odd paths and non-aten operators are refused.  Only the rebuilt copy is
ever given to torch.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import zipfile
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search import Workload

MAX_MEMBERS = 20_000
MAX_EXPANSION = 8  # uncompressed bytes may be at most this many times the archive (zip bombs)
_MEMBER_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_ALLOWED_MEMBERS = (
    re.compile(r"^(archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id)$"),
    re.compile(r"^models/[A-Za-z0-9_.-]+\.json$"),
    re.compile(r"^data/weights/[A-Za-z0-9_.-]+_weights_config\.json$"),
    re.compile(r"^data/weights/weight_\d+$"),
    re.compile(r"^data/constants/[A-Za-z0-9_.-]+_constants_config\.json$"),
    re.compile(r"^data/constants/tensor_\d+$"),
)
_SAMPLE_INPUTS_RE = re.compile(r"^data/sample_inputs/[A-Za-z0-9_.-]+\.pt$")
_ALLOWED_TARGETS = ("torch.ops.aten.", "_operator.")
_PICKLE_OPCODE_PROTO = b"\x80"


class UploadError(ValueError):
    """An upload is malformed or unsafe; the message names the field and what is wrong."""


# ---------------------------------------------------------------------------------------------
# .pt2
# ---------------------------------------------------------------------------------------------


def _graph_targets(node_holder: Any) -> list[str]:
    """Every operator target in a serialized graph (walks nested graphs too)."""
    found: list[str] = []
    if isinstance(node_holder, dict):
        for key, value in node_holder.items():
            if key == "target" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_graph_targets(value))
    elif isinstance(node_holder, list):
        for item in node_holder:
            found.extend(_graph_targets(item))
    return found


def _check_payload_config(raw: bytes, member: str, prefix: str) -> None:
    try:
        config = json.loads(raw)["config"]
    except (ValueError, KeyError, TypeError):
        raise UploadError(f"file: {member} is not a payload config") from None
    if not isinstance(config, dict):
        raise UploadError(f"file: {member} is not a payload config")
    for fqn, meta in config.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False or not isinstance(meta.get("path_name"), str):
            raise UploadError(f"file: {member}: entry {fqn!r} is pickled or malformed; only raw tensors are accepted")
        if not re.fullmatch(rf"{prefix}_\d+", meta["path_name"]):
            raise UploadError(f"file: {member}: entry {fqn!r} is not a plain tensor ({meta['path_name']!r})")


def sanitize_pt2(data: bytes) -> bytes:
    """The archive rebuilt from allow-listed members; raises UploadError naming what was refused."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise UploadError("file: not a .pt2 archive (not a readable zip; truncated?)") from None
    if not infos or len(infos) > MAX_MEMBERS:
        raise UploadError(f"file: a .pt2 archive has 1..{MAX_MEMBERS} members, this one has {len(infos)}")
    if sum(i.file_size for i in infos) > MAX_EXPANSION * max(len(data), 1) + 1024 * 1024:
        raise UploadError("file: archive expands too much (zip bomb?)")
    roots = {i.filename.split("/", 1)[0] for i in infos}
    if len(roots) != 1:
        raise UploadError("file: a .pt2 archive has exactly one top-level folder")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as rebuilt:
        for info in infos:
            name = info.filename
            if (
                not _MEMBER_RE.match(name) or name.startswith("/") or ".." in name.split("/")
                or posixpath.normpath(name) != name or info.is_dir()
            ):
                raise UploadError(f"file: refusing archive member {name!r} (unsafe path)")
            rel = name.split("/", 1)[1] if "/" in name else ""
            if _SAMPLE_INPUTS_RE.match(rel):
                rebuilt.writestr(name, b"")  # torch treats an empty member as "no sample inputs"
                continue
            if not any(p.match(rel) for p in _ALLOWED_MEMBERS):
                raise UploadError(f"file: refusing archive member {name!r} (not part of a plain torch.export program)")
            try:
                raw = archive.read(info)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError):
                raise UploadError(f"file: archive member {name!r} is corrupt (truncated upload?)") from None
            if rel.endswith(".json"):
                if raw[:1] == _PICKLE_OPCODE_PROTO:
                    raise UploadError(f"file: archive member {name!r} is a pickle, not JSON")
                if rel.endswith("_weights_config.json"):
                    _check_payload_config(raw, name, "weight")
                elif rel.endswith("_constants_config.json"):
                    _check_payload_config(raw, name, "tensor")
                else:
                    try:
                        targets = _graph_targets(json.loads(raw))
                    except ValueError:
                        raise UploadError(f"file: archive member {name!r} is not valid JSON") from None
                    bad = sorted({t for t in targets if not t.startswith(_ALLOWED_TARGETS)})
                    if bad:
                        raise UploadError(f"file: unsupported operators in the program: {', '.join(bad[:5])}")
            rebuilt.writestr(name, raw)
    return out.getvalue()


def load_program(sanitized: bytes) -> torch.export.ExportedProgram:
    """Deserialize an archive that went through :func:`sanitize_pt2`."""
    try:
        return torch.export.load(io.BytesIO(sanitized))
    except Exception as exc:  # noqa: BLE001 - any deserializer error is a bad upload
        raise UploadError(f"file: not a loadable torch.export program: {type(exc).__name__}: {exc}"[:500]) from None


def _weight(gm: torch.fx.GraphModule, node: Any) -> Tensor | None:
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value if isinstance(value, Tensor) else None


def _install(gm: torch.fx.GraphModule, weight_target: str, module: nn.Module, index: int) -> str:
    owner = weight_target.rsplit(".", 1)[0] if "." in weight_target else ""
    name = owner if owner and not list(gm.get_submodule(owner).children()) else f"layer_{index}"
    if not gm.add_submodule(name, module):
        raise UploadError(f"file: cannot place layer {name!r}")
    return name


def modules_from_program(program: torch.export.ExportedProgram) -> nn.Module:
    """The program as a GraphModule whose conv/linear calls go through real ``nn.Conv*``/``nn.Linear``
    modules (the search finds and swaps layers by module), named after their weights' owners."""
    gm = program.module()
    # the exported module checks inputs against the export-time shapes (batch 1); training needs batches
    gm._forward_pre_hooks.clear()
    convs: dict[Any, type[nn.Conv1d | nn.Conv2d]] = {
        torch.ops.aten.conv1d.default: nn.Conv1d, torch.ops.aten.conv2d.default: nn.Conv2d,
    }
    for index, node in enumerate(list(gm.graph.nodes)):
        if node.op != "call_function":
            continue
        if node.target in convs:
            args = list(node.args) + [None, 1, 0, 1, 1][len(node.args) - 2:]
            x, w_node, b_node, stride, padding, dilation, groups = args[:7]
            weight, bias = _weight(gm, w_node), _weight(gm, b_node)
            if weight is None:
                continue
            layer: nn.Conv1d | nn.Conv2d | nn.Linear = convs[node.target](
                weight.shape[1] * groups, weight.shape[0], cast(Any, tuple(weight.shape[2:])), stride=stride,
                padding=padding, dilation=dilation, groups=groups, bias=bias is not None,
            )
        elif node.target == torch.ops.aten.linear.default:
            x, w_node = node.args[0], node.args[1]
            b_node = node.args[2] if len(node.args) > 2 else None
            weight, bias = _weight(gm, w_node), _weight(gm, b_node)
            if weight is None or weight.dim() != 2:
                continue
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        else:
            continue
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None and layer.bias is not None:
                layer.bias.copy_(bias)
        name = _install(gm, str(w_node.target), layer, index)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (x,))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    # a plain GraphModule: the exported one refuses train()/eval(), which QAT needs
    return torch.fx.GraphModule(gm, gm.graph)


def inspect_model(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """(sanitized archive, info) for an uploaded .pt2; raises UploadError."""
    sanitized = sanitize_pt2(data)
    module = modules_from_program(load_program(sanitized))
    layers = [n for n, m in module.named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)]
    if not layers:
        raise UploadError("file: the program has no conv or linear layer to quantize")
    return sanitized, {"layers": layers[:1000], "n_layers": len(layers)}


# ---------------------------------------------------------------------------------------------
# .npz
# ---------------------------------------------------------------------------------------------

_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def load_arrays(data: bytes) -> dict[str, np.ndarray]:
    """``x_train``, ``y_train`` (required), ``x_test``, ``y_test`` (optional) from an .npz, never unpickling."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            names = list(npz.files)
            unknown = sorted(set(names) - set(_ARRAYS))
            if unknown:
                raise UploadError(f"file: unexpected arrays {unknown}; allowed: {', '.join(_ARRAYS)}")
            arrays = {name: npz[name] for name in names}
    except UploadError:
        raise
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
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise UploadError(f"file: array {name!r} contains NaN or inf")
        if arr.ndim == 0 or arr.shape[0] < 2:
            raise UploadError(f"file: array {name!r} needs at least 2 samples along axis 0")
    for split in ("train", "test"):
        if f"x_{split}" in arrays and arrays[f"x_{split}"].shape[0] != arrays[f"y_{split}"].shape[0]:
            raise UploadError(f"file: x_{split} and y_{split} differ in length")
    return arrays


def inspect_dataset(data: bytes) -> dict[str, Any]:
    arrays = load_arrays(data)
    return {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()}


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


def build_workload(name: str, model_archive: bytes, dataset: bytes, options: dict[str, Any]) -> Workload:
    """A Workload from an uploaded program and arrays.  Integer targets: classification (cross-entropy,
    accuracy); float targets: regression (MSE, metric ``mse``, lower is better)."""
    opts = UploadWorkloadOptions.parse(options)
    model = modules_from_program(load_program(sanitize_pt2(model_archive)))
    arrays = load_arrays(dataset)
    x_train = torch.from_numpy(arrays["x_train"]).float()
    y_np = arrays["y_train"]
    classify = y_np.dtype.kind in "biu"
    y_train = torch.from_numpy(y_np).long() if classify else torch.from_numpy(y_np).float()
    if "x_test" in arrays:
        x_test = torch.from_numpy(arrays["x_test"]).float()
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
        with torch.no_grad():
            out = module(x_test)
        if classify:
            return float((out.argmax(dim=1) == y_test).float().mean())
        return float(F.mse_loss(out, y_test))

    return Workload(
        name=name, model=model, example_inputs=(x_train[:1],), train_batches=train_batches,
        calibration_batches=calibration, loss_fn=F.cross_entropy if classify else F.mse_loss,
        evaluate=evaluate, metric="accuracy" if classify else "mse", higher_is_better=classify, lr=opts.lr,
    )
