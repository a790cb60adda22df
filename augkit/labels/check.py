"""``augkit labels check``: every problem of a labelled dataset, each with its file and line, nothing written.

What is checked (the reasons are :data:`augkit.labels.formats.REASONS`): label files without an image
and images without a required label file, images the labels name that are not there, class ids beyond
the names, coordinates outside the image (beyond :data:`~augkit.labels.formats.TOLERANCE_PX`), boxes
with no width or height, polygons with fewer than 3 points, keypoint counts other than ``kpt_shape``,
sizes in the labels (COCO, VOC, masks) that differ from the image files, duplicate ids (COCO), rows
that do not parse. Images are checked by their header only (size, readable signature): ``augment``
finds the ones whose pixels do not decode.

The same reader does the checking and the reading (:meth:`LabelFormat.parse`), so ``augment`` refuses
exactly the label files this command lists.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from augkit.errors import ImageError
from augkit.labels.formats import check_item_size, get_format, image_size_of, open_dataset
from augkit.labels.model import DatasetInfo, Item


@dataclass(frozen=True)
class LabelIssue:
    """One problem: the file (label file, or the image), 1-based line (None where the format has no
    lines or the problem is the whole file), a short reason and a detail."""

    file: str
    line: int | None
    reason: str
    detail: str = ""

    @classmethod
    def from_error(cls, exc: ImageError) -> LabelIssue:
        return cls(exc.path, getattr(exc, "line", None), exc.reason, exc.detail)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_item(info: DatasetInfo, item: Item) -> list[LabelIssue]:
    """The problems of one image's labels (and of its image's header)."""
    fmt = get_format(info.kind)
    if not item.image.is_file():
        where = item.label_file or item.attrs.get("json") or item.image
        return [LabelIssue(str(where), None, "missing image", f"{item.image} is not there")]
    try:
        size = image_size_of(item.image)
    except ImageError as exc:
        return [LabelIssue.from_error(exc)]
    issues = []
    mismatch = check_item_size(item, size, Path(item.attrs["json"]) if "json" in item.attrs else None)
    if mismatch is not None:
        issues.append(LabelIssue.from_error(mismatch))
    try:
        _, problems = fmt.parse(info, item if item.size else dataclasses.replace(item, size=size))
    except ImageError as exc:
        return [*issues, LabelIssue.from_error(exc)]
    return issues + [LabelIssue.from_error(p) for p in problems]


def check_info(info: DatasetInfo, on_item: Callable[[Item], None] | None = None) -> list[LabelIssue]:
    """Every problem of an opened dataset: dataset-level ones, then each image's; sorted by file and line.
    ``on_item`` is called after each image (progress)."""
    issues = [LabelIssue.from_error(e) for e in get_format(info.kind).check(info)]
    for item in info.items:
        issues += check_item(info, item)
        if on_item is not None:
            on_item(item)
    return sorted(dict.fromkeys(issues), key=lambda i: (i.file, i.line or 0, i.reason, i.detail))


def check_dataset(src: Path, kind: str | None = None) -> list[LabelIssue]:
    """Open ``src`` (detecting its kind unless given) and list every problem. An empty list: clean.
    :class:`~augkit.errors.UsageError` when ``src`` is not a labelled dataset of a known kind."""
    return check_info(open_dataset(Path(src), kind))


def count_reasons(issues: list[LabelIssue]) -> dict[str, int]:
    """reason -> how many, most frequent first."""
    return dict(Counter(i.reason for i in issues).most_common())
