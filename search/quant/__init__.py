"""The quantization engine: formats, layer discovery, fake-quant QAT modules, the qconfig file,
checkpoints, ONNX import and export, and the hardware cost models.  Nothing here knows about
Optuna or the search; ``search.study`` builds on it."""
