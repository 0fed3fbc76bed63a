"""No torch.ao ``QConfigMapping`` route: it cannot reproduce mixq's numbers, and here is why.

A per-fqn ``QConfigMapping`` with ``FakeQuantize(quant_min=0, quant_max=15)`` activations and
``(-7, 7)`` per-channel symmetric weights can be built and runs QAT, but the model it trains is not
the model mixq searched, scored and exports, for five independent reasons:

1. Rounding: torch's ``fake_quantize_per_tensor_affine``/``_per_channel_affine`` kernels compute
   ``nearbyint(x * (1 / scale))``; ONNX QuantizeLinear and mixq divide.  They disagree whenever
   ``x / scale`` is within an ulp of a half-integer (``x = 0x1.800002p-1``, ``scale = 0.3``: 2
   vs 3, pinned in ``tests/search/test_integer_math.py``), so the two stacks drift apart by whole
   steps on such inputs, and a torch.ao model's numbers are not those of the exported QDQ graph.
2. Placement: torch.ao observes and fake-quantizes *op outputs* (fused conv-relu, and also adds,
   concatenations, pooling, unless each is configured off) under the producer's qconfig, while
   mixq quantizes each layer's *input* under that layer's format and leaves everything between
   layers in float.  With mixed precision the tensor between an int8 and an int4 layer is
   quantized to the consumer's format in mixq; torch.ao has no per-consumer input format short of
   a custom ``BackendConfig``.
3. Bias and fp16: torch.ao QAT does not fake-quantize the bias to the int32 grid ``s_in * s_w[c]``
   (it is rounded only at ``convert``), and has no fp16 fake quant at all (the fp16 qconfigs use
   ``PlaceholderObserver``, an identity during QAT).  Both are part of what mixq trains against.
4. Ranges: torch.ao's weight observers keep a running (or moving-average) min/max, while mixq's
   weight scale is ``max|w| / qmax`` of the *current* weights at every step; its activation
   calibration is a global min/max before EMA; LSQ exists only as the private
   ``_LearnableFakeQuantize``.
5. Deployment: nothing downstream of torch.ao takes 4-bit activations: ``convert`` has no 4-bit
   kernels (``quint4x2`` is for embedding bags only) and torch's ONNX exporter refuses every mixq
   range except unsigned 8-bit (``(0, 15)``, ``(-7, 7)`` and even the narrow ``(-127, 127)``
   weights raise ``SymbolicValueError``; pinned in ``tests/search/test_export_onnx.py``).

So an fqn -> ``QConfig`` map would only be a starting point for a new QAT run in torch.ao, not an
export of the searched model.  Users who stay in PyTorch should keep the mixq fake-quant model
(``search.apply_qconfig`` rebuilds it from a qconfig file) and deploy through
:func:`search.export_onnx.export_onnx`, whose graph reproduces the fake-quant numbers.
"""

from __future__ import annotations

__all__: list[str] = []
