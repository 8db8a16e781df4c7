"""Where the data files are and whether they are the originals: the folders searched, the checksums
(computed once per process), and the download into the cache (written to a temporary file, checked,
then renamed, so no partial file is ever left under its final name).

A checksum is of the file's bytes (``"sha256"``, ``"git-blob"``) or, where only the content's is known,
of what the file holds (a :class:`ContentHash`: Frey faces' images, whatever the MAT container's bytes)."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from . import registry

__all__ = ["default_cache_dir", "ContentHash"]

logger = logging.getLogger("iwae.data")


def default_cache_dir() -> Path:
    """Return the user cache folder: ``$IWAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/iwae``, else ``~/.cache/iwae``."""
    explicit = os.environ.get("IWAE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "iwae"
    return Path.home() / ".cache" / "iwae"


def _search_dirs(data_dir: str | os.PathLike | None, subdir: str) -> list[Path]:
    """Local folders searched for a dataset's files, in order (the cache is last)."""
    root: Path | None = None
    if data_dir is not None and str(data_dir) != "":
        root, source = Path(data_dir).expanduser(), "data_dir"
    elif os.environ.get("IWAE_DATA_DIR"):
        root, source = Path(os.environ["IWAE_DATA_DIR"]).expanduser(), "IWAE_DATA_DIR"
    dirs: list[Path] = []
    if root is not None:
        if not root.is_dir():
            raise DataError(
                f"data directory {root} (from {source}) does not exist or is not a folder; "
                "pass --data-dir DIR or set IWAE_DATA_DIR to an existing folder"
            )
        dirs += [root / subdir, root]
    dirs.append(default_cache_dir() / subdir)
    return dirs


def _describe_dirs(dirs: list[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


# --------------------------------------------------------------------------- hashing
@dataclass(frozen=True)
class ContentHash:
    """A checksum of what a file holds rather than of its bytes: ``compute(path)`` reads the file and returns
    the hex digest of its content (raising DataError for a file it cannot read); ``label`` says what is
    hashed, in messages; ``name`` keys the per-process cache."""

    name: str
    label: str
    compute: Callable[[Path], str]


Kind = str | ContentHash  # "sha256", "git-blob", or a ContentHash

# Digests computed in this process, keyed by (real path, device, inode, size, mtime_ns, kind).
_DIGEST_CACHE: dict[tuple, str] = {}


def _stat_key(path: Path, kind: Kind) -> tuple:
    real = os.path.realpath(path)
    st = os.stat(real)
    return (
        real,
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        kind.name if isinstance(kind, ContentHash) else kind,
    )


def _file_digest(path: Path, kind: Kind) -> str:
    """SHA-256 (kind "sha256"), git blob SHA-1 (kind "git-blob") or the content digest (a ContentHash) of a
    file, cached per process."""
    key = _stat_key(path, kind)
    if key in _DIGEST_CACHE:
        return _DIGEST_CACHE[key]
    if isinstance(kind, ContentHash):
        _DIGEST_CACHE[key] = kind.compute(path)
        return _DIGEST_CACHE[key]
    if kind == "sha256":
        h = hashlib.sha256()
    elif kind == "git-blob":
        h = hashlib.sha1()
        h.update(b"blob %d\0" % key[3])
    else:  # pragma: no cover - internal misuse
        raise ValueError(kind)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    _DIGEST_CACHE[key] = digest
    return digest


def _hash_label(kind: Kind) -> str:
    if isinstance(kind, ContentHash):
        return kind.label
    return "sha256" if kind == "sha256" else "git blob sha1"


def _verify_file(path: Path, kind: Kind, expected: str | tuple[str, ...], what: str) -> None:
    """Raise DataError unless the file's digest is one of ``expected``."""
    accepted = (expected,) if isinstance(expected, str) else tuple(expected)
    actual = _file_digest(path, kind)
    if actual not in accepted:
        raise DataError(
            f"{what} file {path} fails its checksum: expected {_hash_label(kind)} "
            f"{' or '.join(accepted)}, got {actual} ({path.stat().st_size} bytes); "
            "the file is corrupt, truncated or not the original: delete it and run again "
            "to re-download it, or replace it with the original file"
        )


# --------------------------------------------------------------------------- download


def _download(
    urls: tuple[str, ...], name: str, dest_dir: Path, kind: Kind, expected: str | tuple[str, ...], what: str
) -> tuple[Path | None, str]:
    """Download ``name`` from the first working base URL into ``dest_dir``, verified.

    Returns (path, "") on success, (None, reason) if no source could be reached.
    Raises DataError if a download completed but its checksum is wrong.  The file
    is written to a temporary file in ``dest_dir`` and renamed only once verified,
    so no partial file is ever left under the final name (nor at all).
    """
    if not urls:
        return None, "no download URL configured"
    accepted = (expected,) if isinstance(expected, str) else tuple(expected)
    reasons: list[str] = []
    mismatches: list[str] = []
    for base in urls:
        url = base + name
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
        except OSError as e:
            return None, f"cannot write to cache folder {dest_dir}: {e}"
        tmp = Path(tmp_name)
        try:
            logger.info("downloading %s to %s", url, dest_dir)
            h = hashlib.sha256() if kind == "sha256" else hashlib.sha1()
            with os.fdopen(fd, "wb") as out:
                request = urllib.request.Request(url, headers={"User-Agent": "iwae"})
                with urllib.request.urlopen(request, timeout=registry.DOWNLOAD_TIMEOUT) as response:
                    if kind == "git-blob":
                        # the blob header needs the size: hash after download
                        while chunk := response.read(1 << 20):
                            out.write(chunk)
                    else:
                        while chunk := response.read(1 << 20):
                            h.update(chunk)
                            out.write(chunk)
            if isinstance(kind, ContentHash):  # read what the temporary file holds, before it may be kept
                try:
                    actual = kind.compute(tmp)
                except DataError as e:
                    mismatches.append(f"{url} gave a file that cannot be read ({str(e).replace(str(tmp), name)})")
                    continue
            elif kind == "git-blob":
                h.update(b"blob %d\0" % tmp.stat().st_size)
                with open(tmp, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            if not isinstance(kind, ContentHash):
                actual = h.hexdigest()
            if actual not in accepted:
                mismatches.append(f"{url} gave {_hash_label(kind)} {actual}, expected {' or '.join(accepted)}")
                continue
            final = dest_dir / name
            os.replace(tmp, final)
            _DIGEST_CACHE[_stat_key(final, kind)] = actual
            logger.info("saved %s", final)
            return final, ""
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts
            reasons.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            if tmp.exists():
                tmp.unlink()
    if mismatches:
        raise DataError(
            f"downloaded {what} file {name} fails its checksum ({'; '.join(mismatches)}); "
            "nothing was saved: try again later, or download the file yourself and pass "
            "--data-dir DIR or set IWAE_DATA_DIR to its folder"
        )
    return None, "; ".join(reasons)


def _locate(
    names: tuple[str, ...],
    dirs: list[Path],
    download: bool,
    urls: tuple[str, ...],
    kind: Kind,
    expected: str | tuple[str, ...],
    what: str,
) -> Path:
    """Find the first of ``names`` in ``dirs`` (in order), else download ``names[0]``; verify it."""
    for d in dirs:
        for n in names:
            p = d / n
            if p.is_file():
                _verify_file(p, kind, expected, what)
                return p
    shown = names[0] if len(names) == 1 else " or ".join(names)
    where = _describe_dirs(dirs)
    if not download:
        raise DataError(
            f"{what} file {shown} not found in {where} and download is disabled; "
            "pass --data-dir DIR or set IWAE_DATA_DIR to a folder that holds it"
        )
    path, reason = _download(urls, names[0], dirs[-1], kind, expected, what)
    if path is None:
        raise DataError(
            f"{what} file {shown} not found in {where} and download failed ({reason}); "
            "pass --data-dir DIR or set IWAE_DATA_DIR to a folder that holds it"
        )
    return path
