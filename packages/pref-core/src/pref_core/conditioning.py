"""Conditioning: the text (or image) conditioning a denoiser receives, as one batched object.

A :class:`Conditioning` holds named tensors whose first dimension is the batch (``prompt_embeds``
(B, L, D), ``pooled_prompt_embeds`` (B, D), ``attention_mask`` (B, L), ...) plus *shared*
entries that carry no batch dimension (FLUX's ``text_ids`` (L, 3), say). It supports what
training and guided sampling need: concatenation and splitting along the batch, per-sample
replacement by a null condition (prompt dropout, CHATS's ``puncond``), and linear combinations
— classifier-free guidance in embedding space and the CHATS proxy prompt
``ĉ = −α·c + (1 + α)·∅`` (CHATS Eq. 17) are one line each::

    proxy = -alpha * cond + (1 + alpha) * null

Only floating-point batched tensors that are not *ids* are combined linearly. Ids — integer/bool
tensors (masks, token ids) and any entry named in ``ids`` (SDXL's float ``add_time_ids``, FLUX's
distilled-guidance value) — and shared entries must agree across the operands, and an error
says which one differs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


class Conditioning:
    """Batched conditioning tensors plus batch-free shared values.

    Args:
        batched: named tensors, each with the batch as dimension 0; all share one batch size.
        shared: named values without a batch dimension (tensors or plain values), carried along
            unchanged by every operation.
        ids: names of batched floating entries that identify rather than describe (sizes,
            positions, a guidance value): never combined linearly, never zeroed by
            :meth:`zeros_like`. Integer and bool entries are always treated as ids.
    """

    __slots__ = ("_batched", "_ids", "_shared")

    def __init__(
        self,
        batched: Mapping[str, Tensor],
        shared: Mapping[str, Any] | None = None,
        *,
        ids: Collection[str] = (),
    ) -> None:
        if not batched:
            raise ValueError("a Conditioning needs at least one batched tensor")
        sizes = {}
        for name, value in batched.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"batched entry {name!r} must be a tensor, got {type(value)!r}")
            if value.ndim == 0:
                raise ValueError(f"batched entry {name!r} is a scalar; it needs a batch dimension")
            sizes[name] = value.shape[0]
        if len(set(sizes.values())) != 1:
            raise ValueError(f"batched entries disagree on the batch size: {sizes}")
        overlap = set(batched) & set(shared or {})
        if overlap:
            raise ValueError(f"names used both as batched and shared entries: {sorted(overlap)}")
        unknown = set(ids) - set(batched)
        if unknown:
            raise ValueError(f"ids names entries that are not batched tensors: {sorted(unknown)}")
        self._batched: dict[str, Tensor] = dict(batched)
        self._shared: dict[str, Any] = dict(shared or {})
        self._ids: frozenset[str] = frozenset(ids)

    # ------------------------------------------------------------------ access
    @property
    def batch_size(self) -> int:
        return next(iter(self._batched.values())).shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def batched(self) -> Mapping[str, Tensor]:
        return dict(self._batched)

    @property
    def shared(self) -> Mapping[str, Any]:
        return dict(self._shared)

    @property
    def ids(self) -> frozenset[str]:
        """Batched entries exempt from linear combination (declared ids and non-float ones)."""
        return self._ids | {k for k, v in self._batched.items() if not v.dtype.is_floating_point}

    def _new(
        self, batched: Mapping[str, Tensor], shared: Mapping[str, Any] | None = None
    ) -> Conditioning:
        return Conditioning(batched, self._shared if shared is None else shared, ids=self._ids)

    def replace(self, **entries: Tensor) -> Conditioning:
        """A copy with some batched entries replaced."""
        unknown = set(entries) - set(self._batched)
        if unknown:
            raise KeyError(
                f"no batched entries {sorted(unknown)}; entries: {sorted(self._batched)}"
            )
        return self._new({**self._batched, **entries})

    def __getitem__(self, name: str) -> Any:
        if name in self._batched:
            return self._batched[name]
        if name in self._shared:
            return self._shared[name]
        raise KeyError(f"no conditioning entry {name!r}; entries: {sorted(self.keys())}")

    def __contains__(self, name: object) -> bool:
        return name in self._batched or name in self._shared

    def keys(self) -> list[str]:
        return [*self._batched, *self._shared]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    @property
    def device(self) -> torch.device:
        return next(iter(self._batched.values())).device

    def __repr__(self) -> str:
        parts = [
            f"{k}={tuple(v.shape)}:{str(v.dtype).removeprefix('torch.')}"
            for k, v in self._batched.items()
        ]
        parts += [f"{k}(shared)" for k in self._shared]
        return f"Conditioning(batch_size={self.batch_size}, {', '.join(parts)})"

    # ------------------------------------------------------------------ batch operations
    def map(self, fn) -> Conditioning:
        """Apply ``fn`` to every batched tensor; shared entries are kept."""
        return self._new({k: fn(v) for k, v in self._batched.items()})

    def to(self, *args: Any, **kwargs: Any) -> Conditioning:
        """``Tensor.to`` on batched and shared tensors; dtype casts touch floating tensors only."""

        def move(v: Any) -> Any:
            if not isinstance(v, Tensor):
                return v
            if v.dtype.is_floating_point:
                return v.to(*args, **kwargs)
            # Keep masks/ids in their integer dtype: only the device part of the call applies.
            device = kwargs.get("device")
            for a in args:
                if isinstance(a, (str, torch.device)):
                    device = a
            return v.to(device) if device is not None else v

        return self._new(
            {k: move(v) for k, v in self._batched.items()},
            {k: move(v) for k, v in self._shared.items()},
        )

    def detach(self) -> Conditioning:
        return self.map(Tensor.detach)

    def index(self, indices: Tensor | Sequence[int] | slice) -> Conditioning:
        """Select samples (a slice, a list of indices, or an index/bool tensor)."""
        if isinstance(indices, slice):
            return self.map(lambda v: v[indices])
        idx = torch.as_tensor(indices, device=self.device)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        return self.map(lambda v: v.index_select(0, idx))

    def split(self, sizes: int | Sequence[int]) -> tuple[Conditioning, ...]:
        """Split along the batch like :func:`torch.split`."""
        pieces = {k: torch.split(v, sizes) for k, v in self._batched.items()}
        count = len(next(iter(pieces.values())))
        return tuple(self._new({k: p[i] for k, p in pieces.items()}) for i in range(count))

    def chunk(self, chunks: int) -> tuple[Conditioning, ...]:
        if self.batch_size % chunks:
            raise ValueError(f"batch size {self.batch_size} does not divide into {chunks} chunks")
        return self.split(self.batch_size // chunks)

    def repeat(self, times: int) -> Conditioning:
        """Tile the whole batch ``times`` times: [c; c; ...] (the [winners; losers] layout)."""
        return Conditioning.cat([self] * times)

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """Concatenate along the batch. Entries and shared values must match."""
        if not items:
            raise ValueError("nothing to concatenate")
        first = items[0]
        for other in items[1:]:
            _check_compatible(first, other, compare_batched_non_float=False)
        return first._new({k: torch.cat([c._batched[k] for c in items]) for k in first._batched})

    # ------------------------------------------------------------------ null condition
    def zeros_like(self) -> Conditioning:
        """All-zero embeddings, ids kept: the *training* null condition.

        This is the null the CHATS and Diffusion-DPO reference code train the unconditional
        branch with. Samplers usually use the *encoded empty prompt* instead (encode("")); the
        two differ, so pick deliberately.
        """
        ids = self.ids
        return self._new(
            {k: v if k in ids else torch.zeros_like(v) for k, v in self._batched.items()}
        )

    def where(self, replace: Tensor, other: Conditioning) -> Conditioning:
        """Per sample: ``other`` where ``replace[i]`` is True, else this conditioning.

        Prompt dropout is ``cond.where(torch.rand(B) < p, null)``. Every entry is replaced,
        masks included, so a dropped sample looks exactly like ``other``.
        """
        replace = torch.as_tensor(replace, device=self.device)
        if replace.dtype != torch.bool or replace.shape != (self.batch_size,):
            raise ValueError(
                f"replace must be a bool tensor of shape ({self.batch_size},), "
                f"got {replace.dtype} {tuple(replace.shape)}"
            )
        _check_compatible(self, other, compare_batched_non_float=False)
        if other.batch_size not in (1, self.batch_size):
            raise ValueError(
                f"other has batch size {other.batch_size}; expected 1 or {self.batch_size}"
            )
        out = {}
        for k, v in self._batched.items():
            o = (
                other._batched[k].to(v.device).expand_as(v)
                if other.batch_size == 1
                else other._batched[k].to(v.device)
            )
            mask = replace.reshape(-1, *([1] * (v.ndim - 1)))
            out[k] = torch.where(mask, o.to(v.dtype), v)
        return self._new(out)

    # ------------------------------------------------------------------ linear algebra
    @staticmethod
    def linear_combination(
        items: Sequence[Conditioning], weights: Sequence[float] | Tensor
    ) -> Conditioning:
        """Σ_k w_k · c_k over floating entries; other entries must agree across the items.

        ``weights`` is a sequence of K numbers, a (K,) tensor, or a (K, B) tensor of per-sample
        weights. The sum is accumulated in float32 (float64 for float64 entries) and cast back
        to each entry's dtype. Ids are taken from the first item (they are equal in all).
        """
        if not items:
            raise ValueError("linear_combination needs at least one conditioning")
        w = torch.as_tensor(weights, dtype=torch.float32)
        if w.shape[0] != len(items) or w.ndim not in (1, 2):
            raise ValueError(
                f"weights must have shape (K,) or (K, B) with K = {len(items)}, "
                f"got {tuple(w.shape)}"
            )
        first = items[0]
        for other in items[1:]:
            if other.batch_size != first.batch_size:
                raise ValueError(
                    f"batch sizes differ ({first.batch_size} vs {other.batch_size}); combine "
                    "conditionings of equal batch size (repeat a null of batch 1 first)"
                )
            _check_compatible(first, other, compare_batched_non_float=True)
        if w.ndim == 2 and w.shape[1] != first.batch_size:
            raise ValueError(f"per-sample weights need shape ({len(items)}, {first.batch_size})")
        out = {}
        ids = first.ids
        for k, v in first._batched.items():
            if k in ids:
                out[k] = v
                continue
            # float32 accumulation for low precision; float64 stays float64.
            acc_dtype = torch.promote_types(v.dtype, torch.float32)
            acc = torch.zeros(v.shape, dtype=acc_dtype, device=v.device)
            for i, item in enumerate(items):
                wi = w[i].to(device=v.device, dtype=acc_dtype)
                if wi.ndim == 1:
                    wi = wi.reshape(-1, *([1] * (v.ndim - 1)))
                acc = acc + wi * item._batched[k].to(acc_dtype)
            out[k] = acc.to(v.dtype)
        return first._new(out)

    def __add__(self, other: Conditioning) -> Conditioning:
        if not isinstance(other, Conditioning):
            return NotImplemented
        return Conditioning.linear_combination([self, other], [1.0, 1.0])

    def __sub__(self, other: Conditioning) -> Conditioning:
        if not isinstance(other, Conditioning):
            return NotImplemented
        return Conditioning.linear_combination([self, other], [1.0, -1.0])

    def __mul__(self, scale: float) -> Conditioning:
        if isinstance(scale, Conditioning):
            return NotImplemented
        return Conditioning.linear_combination([self], [float(scale)])

    __rmul__ = __mul__

    def __neg__(self) -> Conditioning:
        return self * -1.0


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and bool(torch.equal(a.to(b.device), b))
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return False
    return a == b


def _check_compatible(a: Conditioning, b: Conditioning, *, compare_batched_non_float: bool) -> None:
    if set(a._batched) != set(b._batched) or set(a._shared) != set(b._shared):
        raise ValueError(
            f"conditionings have different entries: {sorted(a.keys())} vs {sorted(b.keys())}"
        )
    if a._ids != b._ids:
        raise ValueError(
            f"conditionings declare different ids: {sorted(a._ids)} vs {sorted(b._ids)}"
        )
    ids = a.ids
    for k, v in a._batched.items():
        w = b._batched[k]
        if v.shape[1:] != w.shape[1:]:
            raise ValueError(
                f"entry {k!r} has per-sample shape {tuple(v.shape[1:])} in one conditioning and "
                f"{tuple(w.shape[1:])} in the other (pad prompts to the same length)"
            )
        if v.dtype.is_floating_point != w.dtype.is_floating_point:
            raise ValueError(f"entry {k!r} is floating in one conditioning and not in the other")
        if compare_batched_non_float and k in ids and not _same_value(v, w):
            raise ValueError(
                f"entry {k!r} ({v.dtype}) differs between the conditionings; masks and ids "
                "cannot be combined linearly, so they must be equal"
            )
    for k, v in a._shared.items():
        if not _same_value(v, b._shared[k]):
            raise ValueError(f"shared entry {k!r} differs between the conditionings")
