"""Parts of the ONNX importer (:mod:`search.quant.onnx_import` is the entry point): constant folding in numpy
(:mod:`.fold`)."""
