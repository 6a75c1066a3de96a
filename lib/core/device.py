"""Where a run computes: the torch device and the thread counts of torch and FAISS."""
from __future__ import annotations

from .params import ParamsError

DEVICES = ("cpu", "cuda", "auto")


def pick_device(name: str):
    """``cpu``, ``cuda`` or ``auto`` (cuda when torch sees a GPU) as a ``torch.device``;
    asking for cuda without a GPU is a params error."""
    import torch
    if name not in DEVICES:
        raise ParamsError(f"device must be one of {list(DEVICES)}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("device: cuda was asked for but torch sees no CUDA GPU (use cpu or auto)")
    return torch.device(name)


def set_threads(torch_threads: int, faiss_threads: int | None = None) -> None:
    """Intra-op threads of torch and, if given, of FAISS (each brings its own OpenMP)."""
    import torch
    torch.set_num_threads(int(torch_threads))
    if faiss_threads is not None:
        import faiss
        faiss.omp_set_num_threads(int(faiss_threads))
