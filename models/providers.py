"""Which GPU execution providers can really load here, found quietly. A GPU build of
onnxruntime lists CUDA and TensorRT everywhere; on a machine without their libraries each
session asking for them prints a red `[E:onnxruntime...] Failed to load library` and a
warning. Loading the provider library ourselves gives the same answer without the noise.
Torch-free."""

from __future__ import annotations

import ctypes
import functools
import sys
from pathlib import Path

LIBRARIES = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}


@functools.cache
def unusable(provider: str) -> str | None:
    """Why `provider` cannot load on this machine (a library it needs is missing), else None
    (also where there is nothing to probe: other providers, other systems)."""
    import onnxruntime

    library = Path(onnxruntime.__file__).parent / "capi" / LIBRARIES.get(provider, "")
    if not sys.platform.startswith("linux") or provider not in LIBRARIES or not library.is_file():
        return None
    try:
        ctypes.CDLL(str(library))
    except OSError as e:
        return str(e)
    return None
