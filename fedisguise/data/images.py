"""Images as the package holds them: float32 N×C×H×W in [0, 1] with int64 labels, made from
8-bit arrays, and converted to another size or number of channels (fedisguise.data.datasets
reads them; every other module takes them from there)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class ImageDataset:
    images: torch.Tensor  # N×C×H×W float32 in [0, 1]
    labels: torch.Tensor  # N int64
    num_classes: int
    classes: tuple[str, ...] = ()  # class names by index, where the data names them

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: np.ndarray | torch.Tensor) -> ImageDataset:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageDataset(self.images[idx], self.labels[idx], self.num_classes, self.classes)


def from_uint8(images: np.ndarray, labels: np.ndarray, num_classes: int,
                source: Path | str = "labels", classes: tuple[str, ...] = ()) -> ImageDataset:
    """Images in [0, 1] and int64 labels; labels outside [0, num_classes) are an error here,
    not an index error in every client's loss after Flower has started."""
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f"{source}: {int(bad.sum())} labels outside [0, {num_classes}) "
                         f"(e.g. {int(labels[bad][0])} at index {int(np.flatnonzero(bad)[0])})")
    tensor = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
    return ImageDataset(tensor, torch.from_numpy(np.asarray(labels, dtype=np.int64)),
                        num_classes, tuple(classes))


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's RGB -> L


def converted(data: ImageDataset, image_size: tuple[int, int] | None, channels: int
              ) -> ImageDataset:
    """`data` at `channels` (1 <-> 3) and `image_size` (bilinear, antialiased); 8-bit images
    stay 8-bit (rounded), so the shared copy still holds them exactly."""
    images = data.images
    if not image_size and channels in (0, images.shape[1]):
        return data
    eight_bit = torch.equal(images.mul(255.0).round_().div_(255.0), images)
    if channels and channels != images.shape[1]:
        if channels == 3 and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        elif channels == 1 and images.shape[1] == 3:
            images = torch.einsum("nchw,c->nhw", images, torch.tensor(LUMA))[:, None]
        else:
            raise ValueError(f"cannot convert {images.shape[1]}-channel images to {channels}")
    if image_size and tuple(image_size) != tuple(images.shape[-2:]):
        images = torch.nn.functional.interpolate(images, size=tuple(image_size),
                                                 mode="bilinear", antialias=True,
                                                 align_corners=False).clamp_(0.0, 1.0)
    if eight_bit:
        images = images.mul(255.0).round_().div_(255.0)
    return ImageDataset(images.contiguous(), data.labels, data.num_classes, data.classes)
