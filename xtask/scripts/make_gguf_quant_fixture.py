"""Makes fixtures/gguf/quants.gguf: one tensor per quantisation type with random block bytes
(scales forced to sane f16 values), plus the same tensors dequantised by gguf-py (the reference
implementation shipped with llama.cpp) stored as F32 under `<name>.expected`.

Run: python -m venv v && v/bin/pip install gguf numpy && v/bin/python xtask/scripts/make_gguf_quant_fixture.py
"""
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

rng = np.random.default_rng(20261129)
w = gguf.GGUFWriter("fixtures/gguf/quants.gguf", "llama")
# (type, bytes per block, offsets of f16 scale fields inside a block)
specs = [
    (T.Q4_0, 18, [0]),
    (T.Q4_1, 20, [0, 2]),
    (T.Q5_0, 22, [0]),
    (T.Q5_1, 24, [0, 2]),
    (T.Q8_0, 34, [0]),
    (T.Q4_K, 144, [0, 2]),
    (T.Q5_K, 176, [0, 2]),
    (T.Q6_K, 210, [208]),
]
rows = 2
for ty, nbytes, scale_offs in specs:
    per = gguf.GGML_QUANT_SIZES[ty][0]
    nblocks = 2 * 256 // per * rows  # 512 elements per row
    raw = rng.integers(0, 256, size=(nblocks, nbytes), dtype=np.uint8)
    for off in scale_offs:
        scales = rng.uniform(-0.05, 0.05, size=nblocks).astype(np.float16)
        raw[:, off:off + 2] = scales.view(np.uint8).reshape(nblocks, 2)
    raw = raw.reshape(rows, -1)
    name = ty.name.lower()
    w.add_tensor(name, raw, raw_dtype=ty)
    ref = dequantize(raw, ty).astype(np.float32)
    assert ref.shape == (rows, 512), ref.shape
    w.add_tensor(name + ".expected", ref)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("wrote fixtures/gguf/quants.gguf")
