"""ONNX, both directions.

* :mod:`.backend` -- the backend module (``build``, ``infer``, ``convert``, ``available``, ``OPS``);
* :mod:`.graph` -- lowering: IR -> nodes (the shared walk of ``backends/common.py``);
* :mod:`.pool` -- the rewrite-proof pooling node forms; :mod:`.fold` -- BatchNorm folding (weight layout);
* :mod:`.fp16` -- the float16 file; :mod:`.io` -- writing files (streamed weights);
* :mod:`.runtime` -- ONNX Runtime sessions (the parity leg); :mod:`.inspect` -- reading a file back;
* :mod:`.probe` -- a self-contained ORT runner (also run as a script in other venvs);
* :mod:`.reader` and :mod:`.patterns` -- the import direction: an ONNX graph -> a source.
"""
