"""Each tensor of a GGUF dequantised by the `gguf` Python package (llama.cpp's own reader,
independent of Genie's), as float32: prints {name: [type name, sha256 of the values as
little-endian float32 bytes, element count]} as JSON. `engine/tests/quantize.rs` compares
it with candle's dequantisation of the file `genie model quantize` wrote.

Usage: python3 gguf_dequant_digest.py FILE
"""

import hashlib
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

reader = GGUFReader(sys.argv[1])
out = {}
for t in reader.tensors:
    values = dequantize(t.data, t.tensor_type).astype("<f4", copy=False)
    out[t.name] = [t.tensor_type.name, hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest(),
                   int(values.size)]
print(json.dumps(out))
