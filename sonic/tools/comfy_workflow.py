"""ComfyUI workflows for the queue client: UI format -> API format, overrides, media, outputs.

Both formats are accepted (`load_workflow`); UI ones are converted with the server's
`/object_info` (`ui_to_api`). A malformed file is a one-line `ParameterError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ..files import require_regular_file

IMAGE_LOADERS = {"SonicImageLoader": "image", "LoadImage": "image"}
AUDIO_LOADERS = {"SonicAudioLoader": "audio", "LoadAudio": "audio"}
MAX_WORKFLOW_BYTES = 32 * 1024 * 1024

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
UPLOAD_OPTIONS = ("image_upload", "audio_upload", "video_upload")


def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def _widget_inputs(info: dict) -> list[tuple[str, Any, dict]]:
    """(name, type, options) of a node's widget inputs in the order the frontend stores their values."""
    spec = info.get("input", {})
    order = info.get("input_order") or {cat: list(spec.get(cat, {})) for cat in ("required", "optional")}
    widgets = []
    for category in ("required", "optional"):
        for name in order.get(category, []):
            entry = spec.get(category, {}).get(name)
            if entry is None:
                continue
            typ = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput"):
                widgets.append((name, typ, opts))
    return widgets


def _map_widget_values(values: list, widgets: list[tuple[str, Any, dict]]) -> dict:
    """Positional `widgets_values` -> {input name: value}, skipping the frontend's hidden extra values."""
    result, i = {}, 0
    for index, (name, typ, opts) in enumerate(widgets):
        if i >= len(values):
            break
        result[name] = values[i]
        i += 1
        remaining_widgets = len(widgets) - index - 1
        if typ == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
            if i < len(values) and values[i] in SEED_CONTROL_VALUES:
                i += 1
        if any(opts.get(key) for key in UPLOAD_OPTIONS):
            # LoadImage stores [file, "image"], audio loaders [file, null, null]: the upload widgets' values.
            while i < len(values) and len(values) - i > remaining_widgets and values[i] in (None, "image", ""):
                i += 1
    return result


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow (what the editor saves) into the API format `POST /prompt` takes.

    Widget values map onto widget inputs in `/object_info` order (skipping control_after_generate
    and upload-widget values); links become `[source_id, output_index]`; Reroutes are followed,
    PrimitiveNode values inlined, Notes dropped, muted nodes (mode 2) skipped and bypassed nodes
    (mode 4) passed through by link type. Subgraphs/group nodes are not supported.
    """
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["id"], link["origin_id"], link["origin_slot"], link["target_id"],
                                 link["target_slot"], link.get("type"))
        else:
            links[link[0]] = tuple(link[:6])

    def source_of(link_id, depth=0):
        """('link', [id, slot]) | ('value', v) | None for a link id, through reroutes/bypasses."""
        if link_id is None or link_id not in links or depth > 100:
            return None
        _, from_id, from_slot, _, _, link_type = links[link_id]
        src = nodes.get(from_id)
        if src is None or src.get("mode", 0) == 2:
            return None
        if src["type"] == "Reroute":
            return source_of((src.get("inputs") or [{}])[0].get("link"), depth + 1)
        if src["type"] == "PrimitiveNode":
            return ("value", (src.get("widgets_values") or [None])[0])
        if src.get("mode", 0) == 4:
            for inp in src.get("inputs", []):
                if inp.get("link") is not None and inp.get("type") == link_type:
                    return source_of(inp["link"], depth + 1)
            return None
        return ("link", [str(from_id), from_slot])

    prompt = {}
    for node_id, node in nodes.items():
        class_type = node["type"]
        if class_type in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):
            continue
        info = object_info.get(class_type)
        if info is None:
            raise ParameterError(f"the workflow uses node type {class_type!r}, which this ComfyUI server does not have "
                                 f"(missing custom node pack?)")
        values = node.get("widgets_values") or []
        inputs = dict(values) if isinstance(values, dict) else _map_widget_values(list(values), _widget_inputs(info))
        for inp in node.get("inputs", []):
            if inp.get("link") is None:
                continue
            source = source_of(inp["link"])
            if source is None:
                inputs.pop(inp["name"], None)
            elif source[0] == "value":
                inputs[inp["name"]] = source[1]
            else:
                inputs[inp["name"]] = source[1]
        title = node.get("title") or info.get("display_name") or class_type
        prompt[str(node_id)] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}
    return prompt


def parse_set_options(pairs: list[str]) -> dict[str, str]:
    """['name=value', ...] -> {name: raw value}; a malformed entry is a ParameterError."""
    result = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ParameterError(f"--set expects NAME=VALUE (e.g. --set inference_steps=10), got {pair!r}")
        result[name.strip()] = value
    return result


def _coerce(raw: str, current: Any, name: str) -> Any:
    """The override `raw` converted to the type of the workflow's current value."""
    try:
        if isinstance(current, bool):
            lowered = raw.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError
            return lowered in ("true", "1", "yes", "on")
        if isinstance(current, int):
            number = float(raw)
            if number != int(number):
                raise ValueError
            return int(number)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise ParameterError(f"--set {name}={raw!r}: expected a {type(current).__name__} like {current!r}") from None
    return raw


def apply_overrides(prompt: dict, overrides: dict[str, str]) -> dict:
    """Set each widget input NAME on every node that has it as a constant; unknown names are an error."""
    for name, raw in overrides.items():
        hits = 0
        for node in prompt.values():
            inputs = node.get("inputs", {})
            if name in inputs and not _is_link(inputs[name]):
                inputs[name] = _coerce(raw, inputs[name], name)
                hits += 1
        if not hits:
            known = sorted({k for n in prompt.values() for k, v in n.get("inputs", {}).items() if not _is_link(v)})
            raise ParameterError(f"--set {name}: no node of the workflow has a widget input named {name!r}; "
                                 f"known inputs: {', '.join(known)}")
    return prompt


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def fill_media(prompt: dict, image_name: str, audio_name: str) -> dict:
    """Point every image loader at `image_name` and every audio loader at `audio_name`."""
    found_image = found_audio = False
    for node in prompt.values():
        key = IMAGE_LOADERS.get(node.get("class_type"))
        if key:
            node["inputs"][key] = image_name
            found_image = True
        key = AUDIO_LOADERS.get(node.get("class_type"))
        if key:
            node["inputs"][key] = audio_name
            found_audio = True
    if not (found_image and found_audio):
        missing = " and ".join(w for w, ok in (("an image loader", found_image), ("an audio loader", found_audio)) if not ok)
        raise ParameterError(f"the workflow has no {missing} node ({', '.join(IMAGE_LOADERS)} / "
                             f"{', '.join(AUDIO_LOADERS)}); use a Sonic preset from workflows/")
    return prompt


def video_outputs(outputs: dict) -> list[dict]:
    """File entries of the videos the output nodes reported (history `outputs`)."""
    found = []
    if not isinstance(outputs, dict):
        return found
    for node_id in sorted(outputs, key=str):
        ui = outputs[node_id]
        if not isinstance(ui, dict):
            continue
        for key in ("images", "gifs", "video", "videos"):
            entries = ui.get(key)
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and str(entry.get("filename", "")).lower().endswith((".mp4", ".webm", ".mov")):
                    found.append(entry)
    return found


def describe_prompt_error(answer: Any) -> str:
    """One readable line from a `POST /prompt` 400 answer."""
    if not isinstance(answer, dict):
        return str(answer)[:500]
    parts = []
    error = answer.get("error") or {}
    if isinstance(error, dict) and error.get("message"):
        parts.append(f"{error.get('message')}{': ' + str(error['details']) if error.get('details') else ''}")
    node_errors = answer.get("node_errors")
    for node_id, node in (node_errors.items() if isinstance(node_errors, dict) else ()):
        errors = node.get("errors") if isinstance(node, dict) else None
        for err in errors if isinstance(errors, list) else ():
            if isinstance(err, dict):
                parts.append(f"node {node_id} ({node.get('class_type')}): {err.get('message')} - {err.get('details')}")
    return " ".join(("; ".join(parts) or json.dumps(answer)[:500]).split())


def load_workflow(path: Path, client) -> tuple[dict, dict | None]:
    """(API prompt, UI workflow or None) from a workflow file in either format."""
    path = require_regular_file(path, "workflow file", ParameterError)
    if path.stat().st_size > MAX_WORKFLOW_BYTES:
        raise ParameterError(f"workflow file {path} is {path.stat().st_size:,} bytes; a workflow is at most a few MB")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ParameterError(f"workflow file {path} is not valid JSON ({' '.join(str(exc).split())[:120]})") from None
    if is_ui_workflow(data):
        try:
            return ui_to_api(data, client.object_info()), data
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ParameterError(f"workflow file {path} is a malformed UI workflow ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:120]}); save it again from ComfyUI") from None
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return data, None
    raise ParameterError(f"{path} is neither an API-format nor a UI-format ComfyUI workflow")
