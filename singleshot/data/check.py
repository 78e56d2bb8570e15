"""Finding everything wrong with a data set in one run (``singleshot check-data``).

Readers already report what they see in the annotations (malformed XML/JSON, boxes of zero or negative size,
boxes outside the image beyond 2 pixels, unknown categories, labels out of range, duplicate ids, empty
splits, missing images). This module adds the image files themselves: unreadable or truncated images,
sizes that disagree with the annotation, EXIF orientation, and checks across splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from singleshot.data.formats import detect_format, format_module, list_splits, resolve_classes
from singleshot.data.image_check import check_image_files
from singleshot.data.images import EXIF_MODES
from singleshot.data.records import Problem
from singleshot.errors import UserError


@dataclass
class CheckReport:
    """What :func:`check_data` found: the problems and, per split, the images and objects read."""

    path: str
    format: str
    problems: list[Problem] = field(default_factory=list)
    splits: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]


def check_data(
    path,
    format: str | None = None,
    split: str | None = None,
    classes=None,
    *,
    decode: bool = True,
    exif: str = "auto",
    progress: bool = False,
) -> CheckReport:
    """Check every split (or ``split``) of a data set, images included; never raises for bad content."""
    if exif not in EXIF_MODES:
        raise UserError(f"exif mode {exif!r} is not one of {', '.join(EXIF_MODES)}.")
    p = Path(path)
    format = (format or detect_format(p)).lower()
    module = format_module(format)
    names = resolve_classes(classes)
    splits = [split] if split else (list_splits(p, format) or [None])
    report = CheckReport(str(p), format)
    seen: set[str] = set()
    problems: list[Problem] = []
    members: dict[str, set[str]] = {}
    class_lists: dict[str, list[str]] = {}
    for s in splits:
        label = s or (p.name if p.is_file() else "(all)")  # a COCO JSON: the split is the file
        try:
            result = module.read(p, s, names)
        except UserError as exc:
            problems.append(Problem(str(p), str(exc)))
            continue
        problems += result.problems
        if result.records:
            class_lists[label] = result.class_names
        fresh = [r for r in result.records if r.path not in seen]
        seen.update(r.path for r in fresh)
        checked, found = check_image_files(
            fresh,
            decode=decode,
            exif=exif,
            normalized=result.normalized,
            progress=progress,
            desc=f"check {label}",
        )
        problems += found
        bad = {pr.file for pr in found if pr.drops == "image"}
        usable = [r for r in result.records if r.path not in bad]
        members[label] = {r.path for r in usable}
        report.splits[label] = (len(usable), sum(len(r.labels) for r in usable))
        if not usable and not result.problems and not found:
            problems.append(Problem(str(p), f"split {label!r} has no usable images"))
    if len({tuple(v) for v in class_lists.values()}) > 1:
        first, *rest = class_lists.items()
        for name, other in rest:
            if other != first[1]:
                problems.append(
                    Problem(
                        str(p),
                        f"split {name!r} has classes {other} but {first[0]!r} has "
                        f"{first[1]}; give --classes so every split uses one list",
                    )
                )
    for held_out in ("test", "val"):
        for train in ("train", "trainval"):
            if held_out in members and train in members and not (held_out == "val" and train == "trainval"):
                shared = members[held_out] & members[train]
                if shared:
                    problems.append(
                        Problem(
                            str(p),
                            f"{len(shared)} images of split {held_out!r} are also in "
                            f"{train!r} (e.g. {sorted(shared)[0]})",
                            severity="warning",
                        )
                    )
    report.problems = list(dict.fromkeys(problems))  # one line per problem, even when splits share images
    return report


def check_dataset(
    path,
    format: str | None = None,
    split: str | None = None,
    classes=None,
    *,
    decode: bool = True,
    exif: str = "auto",
    progress: bool = False,
) -> list[Problem]:
    """Every problem of a data set (all splits unless ``split``), images decoded. See :func:`check_data`."""
    return check_data(path, format, split, classes, decode=decode, exif=exif, progress=progress).problems
