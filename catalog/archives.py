"""The photos of a bulk import: a zip read in memory, or a folder (the command line), by CSV path or file name."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

from catalog.images import MAX_UPLOAD_BYTES, ImageError, too_big_message


class ImportFileError(ValueError):
    """A whole import file is unusable (not UTF-8, missing columns, not a zip...); nothing is written."""


def _zip_path(name: str) -> str | None:
    """A zip member or CSV image path, normalised (``/`` separators, no ``.`` parts), or ``None`` when it
    is absolute, has a drive letter or climbs out with ``..`` (never trusted, never opened)."""
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


class ImageArchive:
    """The photos of an import: a zip read in memory by member name, never extracted to disk.

    Members with unsafe names (absolute, drive letters, ``..``) are ignored and listed in
    :attr:`unsafe`. A CSV ``image`` value matches a member by its normalised path, else by file name
    when exactly one member has it.

    Raises:
        ImportFileError: ``data`` is not a readable zip archive.
    """

    def __init__(self, data: bytes, *, name: str = "images zip") -> None:
        self.name = name
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
            raise ImportFileError(f"{name}: not a zip archive ({exc})") from exc
        self.members: dict[str, zipfile.ZipInfo] = {}
        self.unsafe: list[str] = []
        by_base: dict[str, list[str]] = {}
        for info in infos:
            if info.is_dir():
                continue
            path = _zip_path(info.filename)
            if path is None:
                self.unsafe.append(info.filename)
                continue
            self.members[path] = info
            by_base.setdefault(path.rsplit("/", 1)[-1], []).append(path)
        self._by_base = {b: paths[0] for b, paths in by_base.items() if len(paths) == 1}
        self._ambiguous = {b: sorted(paths) for b, paths in by_base.items() if len(paths) > 1}

    def read(self, ref: str) -> tuple[str, bytes]:
        """The member a CSV ``image`` value names, and its bytes (at most :data:`MAX_UPLOAD_BYTES`).

        Raises:
            ValueError: the path is unsafe or not in the zip.
            ImageError: the member is over the size limit or cannot be decompressed.
        """
        path = _zip_path(ref)
        if path is None:
            raise ValueError(f"{ref!r} is not a safe path inside the zip (absolute or with '..'); not opened")
        path = path if path in self.members else self._by_base.get(path, path)
        info = self.members.get(path)
        if info is None and path in self._ambiguous:
            raise ValueError(
                f"{ref!r} matches {len(self._ambiguous[path])} files in {self.name} "
                f"({', '.join(self._ambiguous[path][:3])}); give its path inside the zip"
            )
        if info is None:
            raise ValueError(f"{ref!r} is not in {self.name}")
        if info.file_size > MAX_UPLOAD_BYTES:
            raise ImageError(too_big_message(path, info.file_size))
        try:
            with self._zip.open(info) as fh:
                return path, fh.read(MAX_UPLOAD_BYTES + 1)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
            raise ImageError(f"{path}: cannot be read from the zip ({exc})") from exc


class ImageFolder(ImageArchive):
    """The photos of an import read from a folder (``import_products --images-dir``), as
    :class:`ImageArchive` reads a zip: a CSV value names a file by its path under the folder, else by
    its file name when exactly one file has it; nothing outside the folder is ever opened.

    Raises:
        ImportFileError: ``root`` is not a folder.
    """

    def __init__(self, root: Path | str) -> None:  # noqa: D107 (the class says it)
        self.root = Path(root).resolve()
        self.name = f"folder {root}"
        if not self.root.is_dir():
            raise ImportFileError(f"{root}: not a folder of photos")
        self.unsafe = []
        self._paths: dict[str, Path] = {}
        by_base: dict[str, list[str]] = {}
        for p in self.root.rglob("*"):
            if p.is_file():
                rel = p.relative_to(self.root).as_posix()
                self._paths[rel] = p
                by_base.setdefault(p.name, []).append(rel)
        self._by_base = {b: paths[0] for b, paths in by_base.items() if len(paths) == 1}
        self._ambiguous = {b: sorted(paths) for b, paths in by_base.items() if len(paths) > 1}

    def read(self, ref: str) -> tuple[str, bytes]:
        """As :meth:`ImageArchive.read`, from the folder."""
        path = _zip_path(ref)
        if path is None:
            raise ValueError(
                f"{ref!r} is not a safe path inside the folder (absolute or with '..'); not opened"
            )
        path = path if path in self._paths else self._by_base.get(path, path)
        if path in self._ambiguous:
            raise ValueError(
                f"{ref!r} matches {len(self._ambiguous[path])} files in {self.name}; give its path"
            )
        if path not in self._paths:
            raise ValueError(f"{ref!r} is not in {self.name}")
        size = self._paths[path].stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise ImageError(too_big_message(path, size))
        return path, self._paths[path].read_bytes()
