"""Which files in a folder are images, and to which class each belongs (ImageFolder layout).

Class layout: each first-level folder is a class (``root/cat/x.jpg`` -> ``cat``); deeper
folders keep their relative path and belong to their first-level class. A folder with
images directly in it and no class folders is *flat* (class ``""``). Hidden files, OS
litter and non-image files are ignored (and listed). Symlinked folders are followed once;
loops are cut. An excluded folder (augment's DST) is never entered, also not through a
symlink to it (augment also drops items whose real path lies inside DST). A folder that cannot
be listed (permission denied) is recorded in ``Scan.unreadable`` with the reason, never dropped
silently: callers report it and count it as skipped input. A class folder that is a link to
another class folder (or to a folder inside one) is an *alias* (``Scan.aliases``): its images are
listed once, under the real folder's class, and the alias is reported, never an empty class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from augkit.errors import UsageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store", "__macosx", ".ipynb_checkpoints", "__pycache__"})


def is_ignored(name: str) -> bool:
    """Hidden files (``.x``, AppleDouble ``._x``), OS litter, notebook checkpoints and Python bytecode folders."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def is_image_name(name: str) -> bool:
    return not is_ignored(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS


@dataclass
class Scan:
    """What a folder holds. ``items`` are (relative posix path, class name) in sorted order."""

    root: Path
    items: list[tuple[str, str]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    flat: bool = False
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (relative folder, reason)
    aliases: list[tuple[str, str]] = field(default_factory=list)  # (class folder, the folder it links to)


@dataclass
class _Walk:
    """The state of one walk: folders seen (by device and inode), what was found."""

    root: Path
    excluded: Path | None
    seen: dict[tuple[int, int], str] = field(default_factory=dict)  # folder identity -> first relative path
    class_dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    aliases: list[tuple[str, str]] = field(default_factory=list)

    def is_excluded(self, path: Path) -> bool:
        return self.excluded is not None and path.resolve() == self.excluded

    def folder(self, rel: str) -> None:
        here = self.root / rel if rel else self.root
        try:
            st = here.stat()
        except OSError as exc:
            self.unreadable.append((rel or ".", folder_error(exc)))
            return
        first = self.seen.get((st.st_dev, st.st_ino))
        if first is not None:  # symlink loop or second link to the same folder
            if rel and "/" not in rel and first:  # a class folder that is another class (or its folder)
                self.aliases.append((rel, first))
            return
        self.seen[(st.st_dev, st.st_ino)] = rel
        if self.is_excluded(here):
            return
        try:
            with os.scandir(here) as it:
                # class folders that are symlinks come last: a real folder keeps its own name, and a
                # link to it is reported as an alias (never a second copy of its images, never "empty")
                entries = sorted(it, key=lambda e: (not rel and _is_link(e), e.name))
        except OSError as exc:
            self.unreadable.append((rel or ".", folder_error(exc)))
            return
        for entry in entries:
            self.entry(rel, entry)

    def entry(self, rel: str, e: os.DirEntry) -> None:
        sub = f"{rel}/{e.name}" if rel else e.name
        if is_ignored(e.name):
            self.ignored.append(sub)
            return
        try:
            is_dir = e.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        if is_dir:
            if not rel:
                self.class_dirs.append(e.name)
            self.folder(sub)
        elif is_image_name(e.name):
            self.files.append(sub)
        else:
            self.ignored.append(sub)


def _is_link(e: os.DirEntry) -> bool:
    try:
        return e.is_symlink()
    except OSError:
        return False


def folder_error(exc: OSError) -> str:
    """The reason a folder could not be listed, as recorded in ``Scan.unreadable``."""
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"unreadable ({exc.strerror or exc})"


def scan_folder(root: str | os.PathLike, *, exclude: str | os.PathLike | None = None) -> Scan:
    """List the image files under ``root`` (layout in the module docstring); ``exclude`` is a
    folder never to descend into."""
    root = Path(root)
    if not root.exists():
        raise UsageError(f"{root}: folder not found")
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder")
    walk = _Walk(root, Path(exclude).resolve() if exclude else None)
    walk.folder("")
    if walk.unreadable and walk.unreadable[0][0] == ".":
        raise UsageError(f"{root}: cannot list the folder: {walk.unreadable[0][1]}")
    return _assemble(walk)


def count_images(root: str | os.PathLike, stop_at: int) -> int:
    """How many image files ``root`` and its folders hold, counting by name only and stopping at
    ``stop_at``: a quick size estimate taken before the real scan (errors count as nothing)."""
    n = 0
    for _, dirs, files in os.walk(os.fspath(root)):
        dirs[:] = [d for d in dirs if not is_ignored(d)]
        n += sum(map(is_image_name, files))
        if n >= stop_at:
            break
    return min(n, stop_at)


def _assemble(walk: _Walk) -> Scan:
    def order(f: str) -> tuple[str, str, str]:
        # torchvision ImageFolder order: class, then folder (os.walk, sorted), then file name
        head, _, name = f.rpartition("/")
        return (f.split("/", 1)[0] if "/" in f else "", head, name)

    counts = {c: 0 for c in walk.class_dirs}
    for f in walk.files:
        if "/" in f:
            counts[f.split("/", 1)[0]] += 1
    scan = Scan(root=walk.root, ignored=walk.ignored, unreadable=walk.unreadable, aliases=walk.aliases)
    scan.classes = sorted(c for c, n in counts.items() if n)
    unlisted = {rel for rel, _ in walk.unreadable} | {a for a, _ in walk.aliases}  # reported, not empty
    scan.empty_classes = sorted(c for c, n in counts.items() if not n and c not in unlisted)
    scan.flat = not scan.classes
    # loose files beside class folders are kept (class ""), so nothing is silently dropped
    scan.items = [(f, f.split("/", 1)[0] if "/" in f else "") for f in sorted(walk.files, key=order)]
    return scan
