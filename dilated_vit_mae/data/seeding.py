"""
Random streams (augmentation, training masks, evaluation masks: independent, each a function of (seed,
epoch, index) only) and the batch transform of every loader, which seeds each training image's augmentation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Literal

import torch


# Each random stream has its own tag, so that two streams drawn for the same (seed, epoch, example) are independent:
# seeding the augmentation and the training mask from the same numbers made the first mask scores equal the crop
# and flip draws (patch 0 was always masked when the crop covered more than 80% of the image).
STREAMS = {"augmentation": 1, "train_mask": 2, "eval_mask": 3}
Stream = Literal["augmentation", "train_mask", "eval_mask"]


def stable_seed(*parts: int) -> int:
    """A 63-bit seed from integers, identical in every process (unlike Python's salted `hash`)."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _stream_tag(stream: Stream) -> int:
    if stream not in STREAMS:
        raise ValueError(f"Unknown random stream {stream!r}; use one of {sorted(STREAMS)}.")
    return STREAMS[stream]


def seeded_generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(stable_seed(*parts))


def stream_generator(stream: Stream, seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator for one example's draws of one stream (e.g. its augmentation in an epoch)."""
    return seeded_generator(_stream_tag(stream), seed, epoch, index)


_MASK32 = 0xFFFFFFFF


def _mulmod32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """`(x * constant) mod 2**32` for int64 tensors holding values below 2**32, without int64 overflow."""
    high, low = constant >> 16, constant & 0xFFFF
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (Wellons' "lowbias32"): every input bit affects every output bit."""
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _absorb(state: torch.Tensor, value: int | torch.Tensor) -> torch.Tensor:
    """Fold a (possibly 64-bit) integer into a 32-bit hash state."""
    if isinstance(value, int):
        value &= 2**64 - 1
        for half in (value & _MASK32, value >> 32):
            state = _mix32(state ^ half ^ 0x9E3779B9)
        return state
    return _mix32(state ^ (value & _MASK32) ^ 0x9E3779B9)


def masking_noise(
    sample_indices: torch.Tensor, num_patches: int, *, stream: Stream, seed: int, epoch: int = 0
) -> torch.Tensor:
    """
    `(B, num_patches)` masking scores in [0, 1), a pure function of `(stream, seed, epoch, sample_index, patch)`.

    A counter-based hash in int64 arithmetic, one vectorised draw for the whole batch on the indices' device: the
    same on CPU and GPU, whatever batch, process or worker an example lands in. The scores are float64 and distinct
    within a row (hash * num_patches + patch), so `argsort` has no ties to break differently on another device.
    """
    device = sample_indices.device
    state = torch.zeros((), dtype=torch.int64, device=device)
    for part in (_stream_tag(stream), seed, epoch):
        state = _absorb(state, int(part))
    rows = _absorb(state, sample_indices.to(torch.int64).reshape(-1, 1))  # (B, 1)
    patches = torch.arange(num_patches, dtype=torch.int64, device=device)
    hashed = _mix32(_absorb(rows, patches) ^ rows)  # (B, L)
    return (hashed.double() * num_patches + patches.double()) / (float(2**32) * num_patches)


class IndexedTransform:
    """
    The batch transform of every loader, for `datasets.Dataset.set_transform`: applies a per-image transform to the
    image column and keeps each example's index (`{"pixel_values": [...], index_column: [...]}`), which fixes the
    example's masks and, with a `seed`, its augmentation.

    With a `seed` (training) every image gets its own generator of the "augmentation" stream, a function of `(seed,
    epoch, sample_index)` only: the augmentation of an example does not depend on the batch it lands in, the worker
    that loads it, the number of processes or an interruption. Without one (evaluation) the transform is called
    without a generator, as a deterministic view.

    Args:
        transform (`Callable`):
            A per-image transform: taking `(image, generator=...)` with a seed (`MAETrainTransform`,
            `MAEHostTransform`), `(image)` without (`eval_view`).
        image_column (`str`, *optional*, defaults to `"image"`): the column holding images.
        index_column (`str`, *optional*, defaults to `"sample_index"`): the column holding each example's index in
            the split.
        seed (`int`, *optional*): the run's seed; `None` for a deterministic transform.

    Set `epoch` before iterating over an epoch. It lives in shared memory, so that persistent `DataLoader` workers
    (which keep the copy of the dataset they were started with) see the new value when the next epoch's iterator
    starts.

    Example:

    ```python
    >>> import PIL.Image
    >>> from dilated_vit_mae.data.seeding import IndexedTransform
    >>> from dilated_vit_mae.data.transforms import MAETrainTransform
    >>> augmentation = IndexedTransform(MAETrainTransform(32), seed=0)
    >>> augmentation.epoch = 1
    >>> batch = augmentation({"image": [PIL.Image.new("RGB", (178, 218))], "sample_index": [7]})
    >>> batch["pixel_values"][0].shape, batch["sample_index"]
    (torch.Size([3, 32, 32]), [7])
    ```
    """

    def __init__(
        self,
        transform: Callable,
        image_column: str = "image",
        index_column: str = "sample_index",
        *,
        seed: int | None = None,
    ):
        self.transform = transform
        self.image_column = image_column
        self.index_column = index_column
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.fill_(int(value))

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        indices = batch[self.index_column]
        if self.seed is None:
            pixel_values = [self.transform(image) for image in batch[self.image_column]]
        else:
            epoch = self.epoch
            pixel_values = [
                self.transform(image, generator=stream_generator("augmentation", self.seed, epoch, index))
                for image, index in zip(batch[self.image_column], indices)
            ]
        return {"pixel_values": pixel_values, self.index_column: indices}
