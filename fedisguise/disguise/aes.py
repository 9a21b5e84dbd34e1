"""AES pixel-level block encryption (DisguisedNets vs InstaHide, papers/…-abstract.txt).

Each image is quantised to bytes and cut into 16-byte AES blocks, in the order of its
b×b pixel blocks (channels last within a block). Each AES block is encrypted in XEX mode
(the core of XTS): C = E_K1(P ⊕ T_j) ⊕ T_j with T_j = E_K2(j) for its position j in the image.
Deterministic for a key, so equal content at the same position always encrypts equally and a
model can still learn; a known plain/cipher pair reveals nothing about other content (the
paper's Level-2 guarantee), unlike an XOR keystream. One ECB call per chunk of images:
no Python loops over blocks or pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedisguise.disguise.base import Disguise, check_block_size, register
from fedisguise.disguise.blocks import from_blocks, images_per_chunk, to_blocks
from fedisguise.disguise.keys import DisguiseKey

AES_BLOCK = 16


def _ecb(key: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(data) + encryptor.finalize()


@register
class AESBlocks(Disguise):
    name = "aes"
    per_image = True

    def __init__(self, key: DisguiseKey, block_size: int = 4) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self._k1 = key.secret_bytes("aes:data", 32)
        self._k2 = key.secret_bytes("aes:tweak", 32)
        self._tweaks: dict[int, np.ndarray] = {}

    def _check_shape(self, chw):
        c, h, w = chw
        check_block_size(chw, self.block_size)
        if (c * self.block_size ** 2) % AES_BLOCK:
            raise ValueError(
                f"aes needs block_size² × channels to be a multiple of {AES_BLOCK} bytes "
                f"(one AES block); got {self.block_size}²×{c} = {c * self.block_size ** 2}. "
                "Use block_size 4 or 8 for grey images, 4 for colour."
            )

    def _tweak(self, chunks: int) -> np.ndarray:
        if chunks not in self._tweaks:
            index = np.zeros((chunks, AES_BLOCK), dtype=np.uint8)
            index[:, 8:] = np.arange(chunks, dtype=">u8").view(np.uint8).reshape(chunks, 8)
            self._tweaks[chunks] = np.frombuffer(_ecb(self._k2, index.tobytes()),
                                                 dtype=np.uint8).reshape(chunks, AES_BLOCK)
        return self._tweaks[chunks]

    def _apply(self, images, labels):
        n, c, h, w = images.shape
        b = self.block_size
        tweak = self._tweak(c * h * w // AES_BLOCK)
        out = torch.empty(images.shape, dtype=images.dtype, device=images.device)
        step = images_per_chunk(images)
        for start in range(0, n, step):  # chunks small enough to stay in cache
            chunk = images[start:start + step]
            k = len(chunk)
            # Quantise in raster order, then reorder the bytes (4× less to move than floats):
            # k×C×T×b×b -> k×T×(b·b·C), each pixel block's bytes contiguous, channels last.
            levels = torch.mul(chunk, 255).round_().to(torch.uint8)
            blocks = to_blocks(levels, b).permute(0, 2, 3, 4, 1)
            plain = blocks.cpu().numpy().reshape(k, -1, AES_BLOCK)  # reshape copies once
            cipher = np.frombuffer(_ecb(self._k1, (plain ^ tweak).tobytes()), dtype=np.uint8)
            cipher = torch.from_numpy(cipher.reshape(plain.shape) ^ tweak).to(images.device)
            cipher = cipher.view(blocks.shape).permute(0, 4, 1, 2, 3)  # back to k×C×T×b×b
            target = out[start:start + k]
            target.copy_(from_blocks(cipher, h, w))  # bytes -> float, in raster order
            target.div_(255.0)
        return out, labels
