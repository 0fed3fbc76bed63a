"""Let ``import torchvision`` succeed with CPU torch 2.13.0 (imported before torchvision, for its side effect).

torchvision 0.28.0, the only wheel for torch 2.13, is linked against CUDA libraries the CPU torch lacks: its
extension does not load, and registering fake kernels for ``torchvision::nms`` / ``qnms`` then fails.  Defining
those two schemas first lets the import succeed (its C++ ops stay unavailable; the models here do not use them).
"""

from __future__ import annotations

import torch

_LIB: torch.library.Library | None = None
try:
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
except RuntimeError:  # already defined (the extension did load, or this ran twice)
    pass
