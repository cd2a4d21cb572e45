"""A copy of a GGUF file with some tensor types converted (Q4_1 → Q4_0, …), with the ``gguf``
package's own quantizers.

For the benchmarks and the tests, not the server: a Q4_0 copy of the shipped Q4_1 default puts
llama.cpp on its fastest 4-bit kernel (it has none for Q4_1 on x86), so that a comparison is
not decided by a missing kernel; and a Q4_0 file is the exact case of the int4 graph. The
metadata is copied field by field as gguf's ``gguf_new_metadata.py`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..atomic import replacing


def requantize_gguf(source: Path, target: Path, conversions: Mapping[str, str]) -> Path:
    """Write ``target``: ``source`` with every tensor of a type in ``conversions`` (type name →
    type name, e.g. ``{"Q4_1": "Q4_0"}``) dequantized and quantized again. Written beside the
    target and renamed into place, so a reader never sees half a file."""
    import gguf
    from gguf.quants import dequantize, quantize

    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    with replacing(target) as partial:
        writer = gguf.GGUFWriter(str(partial), arch)
        for field in reader.fields.values():
            if field.name == "general.architecture" or field.name.startswith("GGUF."):
                continue  # written by GGUFWriter itself
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
        for tensor in reader.tensors:
            kind = tensor.tensor_type.name
            data = np.asarray(tensor.data)
            shape = [int(d) for d in reversed(tensor.shape)]  # rows first, as numpy
            if kind in conversions:
                new_type = gguf.GGMLQuantizationType[conversions[kind]]
                floats = dequantize(data, tensor.tensor_type).reshape(shape)
                writer.add_tensor(tensor.name, quantize(floats, new_type), raw_dtype=new_type)  # uint8 [rows, bytes]
            else:
                writer.add_tensor(tensor.name, data, raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return target
