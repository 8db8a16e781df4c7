"""User arrays as a data set (``npz:PATH``): a ``.npz`` with train, test and optional valid, or one ``.npy``
split 80/10/10; uint8 grey levels or values in [0, 1], any image shape."""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import registry
from .files import _file_digest
from .splits import Splits, _check_array, _dynamic_splits, _is_binary, _to_tensor

__all__: list[str] = []


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        raise DataError(f"{path} is corrupt or not a .npz (zip) archive; write it again with numpy.savez")
    try:
        # open the file ourselves: np.load leaks its handle when the archive is corrupt
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path} holds object arrays (pickled); save plain numeric arrays instead") from None
        raise DataError(
            f"{path} is corrupt or truncated, or not a .npz file ({e}); write it again with numpy.savez"
        ) from None
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError, KeyError) as e:
        raise DataError(
            f"{path} is corrupt or truncated, or not a .npz file ({type(e).__name__}: {e}); "
            "write it again with numpy.savez"
        ) from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            arr = np.load(f, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(f"{path} holds an object array (pickled); save a plain numeric array instead") from None
        raise DataError(
            f"{path} is corrupt or truncated, or not a .npy file ({e}); write it again with numpy.save"
        ) from None
    except (EOFError, OSError) as e:
        raise DataError(
            f"{path} is corrupt or truncated ({type(e).__name__}: {e}); write it again with numpy.save"
        ) from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path} is a .npz archive, not a .npy file; name it .npz")
    return arr


CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: the channel counts of images saved channels-last


def _refuse_channels_last(arr: np.ndarray, what: str) -> None:
    """Refuses a 4-D array that looks channels-last, (N, H, W, C) with C of 1, 3 or 4 and H not: read as
    (N, C, H, W) it would be H channels of W x C images, and a conv net would convolve the wrong axes."""
    if arr.ndim == 4 and arr.shape[3] in CHANNELS and arr.shape[1] not in CHANNELS:
        n, h, w, c = arr.shape
        fix = "x[..., 0] (one channel)" if c == 1 else "np.moveaxis(x, -1, 1)"
        raise DataError(
            f"{what} has shape {arr.shape}, which looks channels-last (N, H, W, C) = ({n}, {h}, {w}, {c}); "
            f"4-D arrays are read as (N, C, H, W): save {fix} instead"
        )


def _holdout(n: int) -> int:
    return max(1, int(n * registry.NPZ_HOLDOUT_FRACTION))


def _load_user_arrays(spec: str, mode: str = "dynamic", deq: bool = False) -> Splits:
    path = Path(spec[len("npz:") :]).expanduser()
    if not spec[len("npz:") :]:
        raise DataError("dataset 'npz:' needs a path, e.g. npz:/path/to/images.npz")
    if not path.is_file():
        raise DataError(f"user data file {path} not found; give an existing .npz or .npy file as npz:PATH")
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"PK\x03\x04"):
        arrays = _read_npz(path)
        for key in ("train", "test"):
            if key not in arrays:
                raise DataError(
                    f"{path} has no array '{key}' (it has {sorted(arrays)}); "
                    "save arrays train, test and optionally valid"
                )
        splits = {k: arrays[k] for k in ("train", "valid", "test") if k in arrays}
    elif head == b"\x93NUMPY":
        splits = {"all": _read_npy(path)}
    else:
        raise DataError(
            f"{path} is neither a .npz nor a .npy file (or it is corrupt); save it with numpy.savez or numpy.save"
        )

    checked: dict[str, np.ndarray] = {}
    feature_shape = None
    # one file, one reading of uint8: grey levels k/255 if any of its uint8 arrays has a value above 1
    grey8 = any(a.dtype == np.uint8 and not _is_binary(a) for a in splits.values())
    for key, arr in splits.items():
        what = f"{path}" if key == "all" else f"{path} array '{key}'"
        _refuse_channels_last(arr, what)
        x = _check_array(arr, what, grey8)
        if feature_shape is None:
            feature_shape = arr.shape[1:]
        elif arr.shape[1:] != feature_shape:
            raise DataError(
                f"{what} has images of shape {arr.shape[1:]} but train has {feature_shape}; "
                "all splits need the same image shape"
            )
        checked[key] = x
    if "all" in checked:
        x = checked.pop("all")
        n = x.shape[0]
        k = _holdout(n)
        if n - 2 * k < 1:
            raise DataError(
                f"{path} has only {n} images; a .npy file needs at least 3 (split 80/10/10 into train/valid/test)"
            )
        checked = {"train": x[: n - 2 * k], "valid": x[n - 2 * k : n - k], "test": x[n - k :]}
    elif "valid" not in checked:
        x = checked["train"]
        n = x.shape[0]
        k = _holdout(n)
        if n - k < 1:
            raise DataError(f"{path} array 'train' has only {n} image; add an array 'valid' or more training images")
        checked["train"], checked["valid"] = x[: n - k], x[n - k :]

    assert feature_shape is not None
    files = {path.name: _file_digest(path, "sha256")}  # what a run trained on these arrays records
    if len(feature_shape) in (2, 3):
        image_shape: tuple[int, ...] | None = tuple(int(n) for n in feature_shape)
    else:
        side = math.isqrt(int(feature_shape[0]))
        image_shape = (side, side) if side * side == feature_shape[0] else None
    if all(_is_binary(v) for v in checked.values()):
        if deq:
            raise DataError(f"{path} holds binary images (values 0 and 1): dequantize applies to 8-bit grey levels")
        t = {k: _to_tensor(v) for k, v in checked.items()}
        return Splits(
            spec, t["train"], t["valid"], t["test"], False, image_shape=image_shape, binarization=mode, files=files
        )
    return _dynamic_splits(
        spec, checked["train"], checked["valid"], checked["test"], image_shape, mode=mode, deq=deq, files=files
    )
