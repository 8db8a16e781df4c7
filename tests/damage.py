"""Damage done to a run's files on purpose, as disks, copies and users do it: a flipped bit inside a
safetensors file's tensor data, a weight set to nan, another run's file copied in."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

from safetensors.torch import load_file

from iwae.checkpoint import load_tensors, save_tensors


def tensor_offset(path: Path, name: str | None = None) -> tuple[str, int]:
    """``(tensor name, byte offset in the file)`` of the first float32 tensor of a safetensors file (or
    of ``name``), read from the file's own header: 8 bytes of header length, the JSON header, the data."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    names = [n for n, v in sorted(header.items()) if n != "__metadata__" and v["dtype"] == "F32"]
    name = name or names[0]
    return name, 8 + length + header[name]["data_offsets"][0]


def flip_exponent_bit(path: Path, name: str | None = None) -> str:
    """Flips the top exponent bit of the first float32 value of tensor ``name`` (little-endian: bit 6 of its
    fourth byte), in place, as a bad disk or copy would: |w| < 2 becomes about 1e38 times larger. Returns
    the tensor's name."""
    name, offset = tensor_offset(path, name)
    data = bytearray(path.read_bytes())
    data[offset + 3] ^= 0x40
    path.write_bytes(bytes(data))
    return name


def nan_weight(path: Path, consistent: bool = True) -> None:
    """One weight of the first float tensor set to nan: rewritten through iwae.checkpoint.save_tensors
    (``consistent``: the digest is that of the nan tensors, as a run that wrote them would have it), or
    patched into the bytes (the digest no longer matches)."""
    if consistent:
        tensors, meta = load_tensors(path)
        name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
        tensors[name].view(-1)[0] = float("nan")
        save_tensors(path, tensors, meta)
        return
    _, offset = tensor_offset(path)
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(data))


def copy_file(source: Path, target: Path) -> None:
    """``source`` copied over ``target`` (another run's file put in place of this one's)."""
    shutil.copyfile(source, target)


def max_abs(path: Path) -> float:
    """The largest |value| of the float tensors of a safetensors file, read without iwae's checks."""
    return max(float(t.abs().max()) for t in load_file(str(path)).values() if t.is_floating_point() and t.numel())


__all__ = ["tensor_offset", "flip_exponent_bit", "nan_weight", "copy_file", "max_abs"]
