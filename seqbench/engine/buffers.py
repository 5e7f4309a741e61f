"""The engine's work-buffer cache. Large fresh allocations are mmap'ed by malloc and every
page then costs a page fault on first touch (3x slower than writing warm memory on the
benchmark machine), so the big per-call buffers are recycled. A cached buffer is handed out
again only when nothing but the cache references its storage any more (autograd released its
saved tensors, the caller dropped the output), which is checked with torch's storage use
count; where that private API is missing, buffers are simply allocated fresh.
"""

from __future__ import annotations

import math
import os
import threading

import torch

_POOL_MIN_BYTES = 1 << 20


def _storage_use_count(t: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)  # type: ignore[attr-defined]


class _BufferCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: list[tuple[tuple, torch.Tensor, int]] = []  # LRU order: (key, buf, base)
        try:
            probe = torch.empty(1)
            _storage_use_count(probe)
            self.enabled = True
        except Exception:  # pragma: no cover - depends on torch internals
            self.enabled = False

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for _, b, _ in self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
        numel = math.prod(shape)
        nbytes = numel * dtype.itemsize
        if not self.enabled or device.type != "cpu" or nbytes < _POOL_MIN_BYTES:
            return torch.empty(shape, dtype=dtype, device=device)
        key = (numel, dtype)
        with self._lock:
            for k, (ekey, buf, base) in enumerate(self._entries):
                if ekey == key and _storage_use_count(buf) <= base:
                    self._entries.append(self._entries.pop(k))
                    return buf.view(shape)
            buf = torch.empty(numel, dtype=dtype, device=device)
            base = _storage_use_count(buf)
            total = self.nbytes() + nbytes
            k = 0
            while total > self.max_bytes and k < len(self._entries):
                _, old, old_base = self._entries[k]
                if _storage_use_count(old) <= old_base:  # evict free buffers, oldest first
                    total -= old.numel() * old.element_size()
                    self._entries.pop(k)
                else:
                    k += 1
            if total <= self.max_bytes:
                self._entries.append((key, buf, base))
            return buf.view(shape)


cache = _BufferCache(int(float(os.environ.get("SEQBENCH_BUFFER_CACHE_MB", "1024")) * 2**20))


def clear_buffer_cache() -> None:
    """Drop the engine's cached work buffers (they are reused across calls to avoid page
    faults; at most ``SEQBENCH_BUFFER_CACHE_MB`` MiB, default 1024, are kept)."""
    cache.clear()
