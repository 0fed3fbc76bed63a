"""The inspection child: ``python -m service.inspect_child {model,dataset,probe} < upload`` runs one
inspection of :mod:`service.uploads` inside :mod:`service.sandbox`'s limits and prints its JSON answer.

Its own module so that the sandbox (the limits, the runner) knows nothing of what it runs and
``service.uploads`` (which runs inspections) and the sandbox import each other in one direction only."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

from service.sandbox import TASKS, SandboxLimits, enter_limits, isolate_network, probe
from service.uploads import UploadError, inspect_dataset_here, inspect_model_here


def main(task: str) -> dict[str, Any]:
    if task == "model":  # imported before the limits: the imports' own mappings are not the upload's
        from search import load_onnx_model  # noqa: F401  (search.quant.onnx_import and onnx, loaded)

    # under the file-size limit of 0 no file can be written, so a directory probe that writes one fails:
    # torch's first conv lazily imports its compiler, whose cache path asks tempfile for a writable directory
    tempfile.gettempdir()  # found (and cached) now, while writing is still allowed
    isolated = isolate_network()
    memory_bytes = int(os.environ.get("MIXQ_SANDBOX_MEMORY_BYTES", SandboxLimits.memory_bytes))
    enter_limits(memory_bytes, int(os.environ.get("MIXQ_SANDBOX_CPU_S", SandboxLimits.cpu_s)))
    data = sys.stdin.buffer.read()
    try:
        if task == "probe":
            return {"info": {**probe(), "network_isolated": isolated}}
        return {"info": inspect_model_here(data) if task == "model" else inspect_dataset_here(data)}
    except UploadError as exc:
        return {"error": str(exc)}
    except MemoryError:
        return {"error": f"file: inspecting the upload needs more than {memory_bytes // 2**20} MiB"}
    except Exception as exc:  # noqa: BLE001 - whatever the upload provokes is the upload's fault
        text = str(exc)
        if "allocate" in text or "out of memory" in text.lower():
            return {"error": f"file: inspecting the upload needs more than {memory_bytes // 2**20} MiB"}
        return {"error": f"file: could not be inspected ({type(exc).__name__}: {text[:300]})"}


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in TASKS:
        sys.exit(f"usage: python -m service.inspect_child {{{','.join(TASKS)}}} < upload")
    answer = main(sys.argv[1])
    sys.stdout.write(json.dumps(answer) + "\n")
