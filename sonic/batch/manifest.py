"""The job list of a batch: a CSV (header row) or JSONL file, checked in full before any model loads.

Columns/keys: `image`, `audio` (required; relative to the manifest's folder), `output` (optional
file name inside the output folder) and any `generate` job option by its name with `_` for `-`
(`seed`, `steps`, `min_resolution`, `face_box`, `no_crop`, `sync`, ...), which overrides the
command line's value for that row. An empty cell keeps the command line's value.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from ..errors import SonicError

REQUIRED = ("image", "audio")
TRUE_WORDS, FALSE_WORDS = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


class ManifestError(SonicError):
    """The manifest cannot be run as it is (the message lists every problem with its line)."""


@dataclass
class Row:
    """One valid row: its inputs, output name and every job option's value."""

    line: int
    image: Path
    audio: Path
    output: str
    options: dict
    audio_seconds: float


@dataclass
class Problem:
    line: int
    message: str


@dataclass
class Manifest:
    path: Path
    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def describe_problems(self) -> str:
        lines = [f"  {self.path.name} line {p.line}: {p.message}" for p in self.problems]
        bad = len({p.line for p in self.problems})
        return (f"{self.path}: {bad} invalid row{'s' if bad != 1 else ''}; nothing was run "
                f"(fix them, or pass --skip-invalid to run the valid rows)\n" + "\n".join(lines))


@dataclass(frozen=True)
class JobPlan:
    """A row's options turned into what the pipeline and the encoder take."""

    config: object  # SonicConfig
    face_box: object
    face_index: int | None
    duration: float | None
    postprocess: object  # PostProcessOptions or None
    crf: int
    preset: str


def job_option_actions() -> dict[str, argparse.Action]:
    """The `generate` job options (one source: `generate.add_job_options`), by their `dest`."""
    from ..commands.generate import add_job_options

    parser = argparse.ArgumentParser(add_help=False)
    add_job_options(parser)
    return {a.dest: a for a in parser._actions if a.option_strings}


def job_defaults(args) -> dict:
    """The command line's job options: every row's starting values."""
    return {dest: getattr(args, dest) for dest in job_option_actions()}


def plan_from_options(options: dict) -> JobPlan:
    """Check a row's options as `generate` checks its flags (`SonicError` on a bad value)."""
    from ..commands.generate import config_from_args, postprocess_options
    from ..inputs.face_box import parse_face_box
    from ..media.video import check_encoder_settings

    args = SimpleNamespace(**options)
    config = config_from_args(args)
    check_encoder_settings(args.crf, args.preset)
    face_box = parse_face_box(args.face_box)
    return JobPlan(config=config, face_box=face_box, face_index=args.face_index, duration=args.duration,
                   postprocess=postprocess_options(args), crf=args.crf, preset=args.preset)


def read_manifest(path, defaults: dict) -> Manifest:
    """Read and check every row (files exist and decode, values in range, outputs unique)."""
    path = Path(path)
    manifest = Manifest(path)
    if not path.is_file():
        raise ManifestError(f"job list {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        entries = _csv_entries(path, manifest)
    elif suffix in (".jsonl", ".ndjson"):
        entries = _jsonl_entries(path, manifest)
    else:
        raise ManifestError(f"job list {path} must be .csv (with a header row) or .jsonl (one JSON object a line)")
    if not entries and not manifest.problems:
        raise ManifestError(f"job list {path} lists no jobs")
    checker = _RowChecker(path.parent, defaults)
    outputs: dict[str, int] = {}
    for line, entry in entries:
        problems_before = len(manifest.problems)
        row = checker.check(line, entry, manifest.problems)
        if row is None:
            continue
        first = outputs.setdefault(row.output.casefold(), line)
        if first != line:
            manifest.problems.append(Problem(line, f"output {row.output} is also written by line {first}; "
                                                   f"give each row its own 'output'"))
        elif len(manifest.problems) == problems_before:
            manifest.rows.append(row)
    return manifest


def _csv_entries(path: Path, manifest: Manifest) -> list[tuple[int, dict]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        entries = []
        for record in reader:
            if None in record:  # more cells than header names
                manifest.problems.append(Problem(reader.line_num, f"{len(record[None])} cell(s) more than the header"))
                continue
            cells = {k.strip(): v for k, v in record.items() if k is not None and v not in (None, "")}
            if cells:
                entries.append((reader.line_num, cells))
    return entries


def _jsonl_entries(path: Path, manifest: Manifest) -> list[tuple[int, dict]]:
    entries = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except ValueError as exc:
            manifest.problems.append(Problem(line, f"not valid JSON ({exc})"))
            continue
        if not isinstance(entry, dict):
            manifest.problems.append(Problem(line, "each line must be a JSON object such as "
                                                   '{"image": "a.png", "audio": "a.wav"}'))
            continue
        entries.append((line, {k: v for k, v in entry.items() if v is not None and v != ""}))
    return entries


class _RowChecker:
    """Checks rows; decodes each distinct image and audio file once."""

    def __init__(self, folder: Path, defaults: dict):
        self.folder, self.defaults = folder, defaults
        self.actions = job_option_actions()
        self.images: dict[tuple, str | None] = {}
        self.audios: dict[tuple, tuple[float | None, str | None]] = {}

    def check(self, line: int, entry: dict, problems: list[Problem]) -> Row | None:
        found: list[str] = []
        for key in REQUIRED:
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                found.append(f"needs '{key}' (a file path relative to the manifest)")
        options = dict(self.defaults)
        for key, value in entry.items():
            if key in (*REQUIRED, "output"):
                continue
            if key not in self.actions:
                found.append(f"unknown column {key!r}; known: image, audio, output, {', '.join(sorted(self.actions))}")
                continue
            try:
                options[key] = _convert(self.actions[key], value)
            except ValueError as exc:
                found.append(f"{key}: {exc}")
        if found:
            problems.extend(Problem(line, m) for m in found)
            return None
        image, audio = (self.folder / entry[k].strip() for k in REQUIRED)
        output = str(entry.get("output") or f"{image.stem}__{audio.stem}.mp4").strip()
        messages = [m for m in (_output_problem(output),) if m]
        try:
            plan = plan_from_options(options)
        except SonicError as exc:
            messages.append(str(exc))
            plan = None
        seconds = None
        if plan is not None:
            messages += [m for m in (self._image_problem(image, plan),) if m]
            seconds, audio_problem = self._audio(audio, plan.duration)
            messages += [audio_problem] if audio_problem else []
            if seconds is not None:
                messages += [m for m in (_sync_problem(plan, seconds),) if m]
        if messages:
            problems.extend(Problem(line, m) for m in messages)
            return None
        return Row(line=line, image=image, audio=audio, output=output, options=options, audio_seconds=seconds)

    def _image_problem(self, image: Path, plan: JobPlan) -> str | None:
        key = (image, plan.config.max_image_pixels)
        if key not in self.images:
            self.images[key] = _decode_image(image, plan.config.max_image_pixels)
        return self.images[key]

    def _audio(self, audio: Path, duration) -> tuple[float | None, str | None]:
        key = (audio, duration)
        if key not in self.audios:
            self.audios[key] = _decode_audio(audio, duration)
        return self.audios[key]


def _convert(action: argparse.Action, value):
    """A cell (text, or a JSON value) as argparse would have parsed the option."""
    if isinstance(action, argparse._StoreTrueAction):
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise ValueError(f"expected true or false, got {value!r}")
        return word in TRUE_WORDS
    if isinstance(value, list) and action.type is None:  # a JSON face box [x1, y1, x2, y2]
        value = ",".join(str(v) for v in value)
    if isinstance(value, bool) or (action.type is int and isinstance(value, float) and value != int(value)):
        raise ValueError(f"expected a{'n integer' if action.type is int else ' ' + _type_name(action)}, got {value!r}")
    try:
        converted = action.type(str(value).strip()) if action.type else str(value).strip()
    except (TypeError, ValueError):
        if action.type is int and isinstance(value, (int, float)):
            return int(value)
        raise ValueError(f"expected {_type_name(action)}, got {value!r}") from None
    if action.choices and converted not in action.choices:
        raise ValueError(f"expected one of {', '.join(map(str, action.choices))}, got {value!r}")
    return converted


def _type_name(action: argparse.Action) -> str:
    return {int: "an integer", float: "a number"}.get(action.type, "text")


def _output_problem(output: str) -> str | None:
    if "/" in output or "\\" in output or output.startswith(".") or not output.lower().endswith(".mp4"):
        return f"output {output!r} must be a plain file name ending in .mp4 (no folder, not hidden)"
    return None


def _decode_image(path: Path, max_image_pixels) -> str | None:
    from ..inputs.image import load_image

    if not path.is_file():
        return f"image {path} not found"
    try:
        load_image(str(path), max_image_pixels=max_image_pixels, limit_name="max_image_pixels")
    except SonicError as exc:
        return f"image {path}: {exc}"
    return None


def _decode_audio(path: Path, duration) -> tuple[float | None, str | None]:
    from ..inputs.audio import load_audio

    if not path.is_file():
        return None, f"audio {path} not found"
    try:
        return load_audio(str(path), duration=duration).seconds, None
    except SonicError as exc:
        return None, f"audio {path}: {exc}"


def _sync_problem(plan: JobPlan, seconds: float) -> str | None:
    from ..commands.generate import check_sync_measurable

    try:
        check_sync_measurable(plan.postprocess, seconds)
    except SonicError as exc:
        return str(exc)
    return None
