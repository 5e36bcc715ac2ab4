"""Rebuild the preset workflows, their API twins and thumbnails.

    python workflows/build_presets.py                      # UI workflows + thumbnails
    python workflows/build_presets.py --server http://127.0.0.1:8188   # also the API twins

The UI files in `workflows/` are what users load and what ComfyUI's Templates browser
lists. For a custom node pack the browser shows each file's name as the template's title and
description and `<name>.jpg` as its thumbnail (no index with titles exists for packs), so the file
names are written for people. The API twins in `workflows/api/<preset>.json` are what
`POST /prompt` and `python -m sonic queue` take; they are produced by converting the UI files
with the server's `/object_info` (`sonic.tools.comfy_client.ui_to_api`), and tests check that the two
still agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE  # ComfyUI lists the top-level *.json of workflows/ as the pack's templates
EXAMPLE_IMAGE = "example_portrait.jpg"
EXAMPLE_AUDIO = "example_speech.wav"

# Node layout: (id, type, title, pos, size, widgets_values, [(input name, type, is widget)], [(output, type)]).
# One column per stage, left to right in data order; links that skip columns run along a corridor above
# (the model) or below (the prepared job) the nodes through Reroutes, so no link crosses a node
# (tests/test_presets_layout.py checks the drawn curves).
def preset_nodes(*, resolution: int, steps: int, postprocess: list, prefix: str, crf: int, preset: str) -> list:
    return [
        (1, "SonicModelLoader", "Sonic Model Loader", [40, 60], [320, 154], ["auto", "auto", "keep", "auto"],
         [], [("sonic_model", "SONIC_MODEL")]),
        (2, "SonicImageLoader", "Sonic Load Image", [40, 330], [320, 360], [EXAMPLE_IMAGE, "image"],
         [], [("image", "IMAGE"), ("mask", "MASK")]),
        (3, "SonicAudioLoader", "Sonic Load Audio", [40, 760], [320, 130], [EXAMPLE_AUDIO, None, None],
         [], [("audio", "AUDIO"), ("duration", "FLOAT")]),
        (4, "SONIC_PreData", "Sonic Prepare (face crop + audio)", [460, 330], [340, 250],
         [0.0, resolution, 0.5, "detect", -1, "", True],
         [("sonic_model", "SONIC_MODEL", False), ("image", "IMAGE", False), ("audio", "AUDIO", False)],
         [("predata", "SONIC_PREDATA"), ("seconds", "FLOAT")]),
        (5, "SonicInference", "Sonic Inference (sampler)", [880, 330], [340, 370],
         [72589, "fixed", steps, 1.0, 1.0, 1.0, 2.0, 2.0, 7.5, 25, 0, 7, 1.0],
         [("sonic_model", "SONIC_MODEL", False), ("predata", "SONIC_PREDATA", False)],
         [("latents", "SONIC_LATENTS")]),
        (6, "SonicLatentDecoder", "Sonic Decode", [1300, 330], [300, 102], [8],
         [("sonic_model", "SONIC_MODEL", False), ("latents", "SONIC_LATENTS", False)],
         [("frames", "IMAGE"), ("fps", "FLOAT")]),
        (7, "SonicPostProcess", "Sonic PostProcess (interpolate, fix, paste back)", [1680, 330], [300, 250],
         postprocess,
         [("sonic_model", "SONIC_MODEL", False), ("predata", "SONIC_PREDATA", False), ("frames", "IMAGE", False),
          ("fps", "FLOAT", False)],
         [("frames", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")]),
        (8, "SonicVideoOutput", "Sonic Video Output (MP4)", [2060, 330], [400, 520], [25.0, prefix, crf, preset],
         [("frames", "IMAGE", False), ("audio", "AUDIO", False), ("fps", "FLOAT", True)],
         [("frames", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")]),
    ]


# Reroutes in the gaps between columns: (id, pos, type carried).
REROUTES = [(10, [375, 210], "SONIC_MODEL"), (11, [803, 210], "SONIC_MODEL"), (12, [1222, 210], "SONIC_MODEL"),
            (13, [1602, 210], "SONIC_MODEL"), (14, [803, 740], "SONIC_PREDATA"), (15, [1602, 740], "SONIC_PREDATA")]
REROUTE_SIZE = [75, 26]

# (from node, from slot, to node, input name; "" for a Reroute's input)
LINKS = [(1, 0, 10, ""), (10, 0, 4, "sonic_model"), (10, 0, 11, ""), (11, 0, 5, "sonic_model"), (11, 0, 12, ""),
         (12, 0, 6, "sonic_model"), (12, 0, 13, ""), (13, 0, 7, "sonic_model"),
         (2, 0, 4, "image"), (3, 0, 4, "audio"), (4, 0, 5, "predata"), (4, 0, 14, ""), (14, 0, 15, ""),
         (15, 0, 7, "predata"), (5, 0, 6, "latents"), (6, 0, 7, "frames"), (6, 1, 7, "fps"), (7, 0, 8, "frames"),
         (7, 1, 8, "audio"), (7, 2, 8, "fps")]


def build_ui_workflow(nodes: list, note: str, workflow_id: str) -> dict:
    """A UI-format (litegraph 0.4) workflow from the compact node table above, with the Reroutes."""
    nodes = nodes + [(rid, "Reroute", None, pos, REROUTE_SIZE, None, [("", "*", False)], [("", typ)])
                     for rid, pos, typ in REROUTES]
    ui_nodes, links = [], []
    by_id = {n[0]: n for n in nodes}
    for link_id, (src, slot, dst, name) in enumerate(LINKS, 1):
        dst_inputs = [i[0] for i in by_id[dst][6]]
        link_type = by_id[src][7][slot][1]
        links.append([link_id, src, slot, dst, dst_inputs.index(name), link_type])
    for order, (node_id, node_type, title, pos, size, values, inputs, outputs) in enumerate(nodes):
        ui_inputs = []
        for name, typ, is_widget in inputs:
            link = next((l[0] for l in links if l[3] == node_id and l[4] == len(ui_inputs)), None)
            entry = {"name": name, "type": typ, "link": link}
            if is_widget:
                entry["widget"] = {"name": name}
            ui_inputs.append(entry)
        ui_outputs = []
        for slot, (name, typ) in enumerate(outputs):
            ui_outputs.append({"name": name, "type": typ, "slot_index": slot,
                               "links": [l[0] for l in links if l[1] == node_id and l[2] == slot]})
        node = {"id": node_id, "type": node_type, "pos": pos, "size": size, "flags": {}, "order": order, "mode": 0,
                "inputs": ui_inputs, "outputs": ui_outputs}
        if node_type == "Reroute":
            node["properties"] = {"showOutputText": False, "horizontal": False}
        else:
            node.update(title=title, widgets_values=values,
                        properties={"Node name for S&R": node_type, "cnr_id": "comfyui-sonic", "ver": "0.1.0"})
        ui_nodes.append(node)
    ui_nodes.append({"id": 9, "type": "Note", "title": "Read me", "pos": [40, 960], "size": [720, 150], "flags": {},
                     "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                     "widgets_values": [note]})
    return {"id": workflow_id, "revision": 0,
            "last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [0, 0]}}, "version": 0.4}


PRESETS = {
    "sonic_fast": dict(
        template="Sonic talking head - fast (512 px, 15 steps)",
        workflow_id="5a0c0001-0000-4000-8000-000000000001",
        caption="Sonic fast preview: 512 px, 15 steps, RIFE 25 fps",
        nodes=dict(resolution=512, steps=15, postprocess=[True, "off", 0.0, False, False, 0.0, 0.0, 24],
                   prefix="sonic/Sonic_fast", crf=20, preset="veryfast"),
        note="Sonic fast preview (about 512 px, 15 steps). Put the weights in ComfyUI/models/sonic (see the README), "
             "copy example_portrait.jpg and example_speech.wav from the pack's workflows/ folder into ComfyUI/input "
             "(or pick your own files) and press Queue."),
    "sonic_high_quality": dict(
        template="Sonic talking head - high quality (768 px, 28 steps, paste-back)",
        workflow_id="5a0c0001-0000-4000-8000-000000000002",
        caption="Sonic high quality: 768 px, 28 steps, RIFE, smoothing, colour match, paste-back",
        nodes=dict(resolution=768, steps=28, postprocess=[True, "off", 0.5, True, True, 0.0, 0.0, 24],
                   prefix="sonic/Sonic_hq", crf=17, preset="slow"),
        note="Sonic high quality (768 px, 28 steps, RIFE interpolation, smoothing, colour match, paste-back into the "
             "full picture). Needs about 2x the VRAM and 3-4x the time of the fast preset. Weights: "
             "ComfyUI/models/sonic (see the README)."),
}


def template_path(name: str) -> Path:
    """The UI workflow of preset `name` (a key of PRESETS): workflows/<its title>.json."""
    return TEMPLATES / f"{PRESETS[name]['template']}.json"


def bezier(a, b, c, d, steps: int = 24) -> list:
    """Points of the cubic curve a-b-c-d (how the editor draws a link)."""
    points = []
    for k in range(steps + 1):
        t = k / steps
        points.append(tuple((1 - t) ** 3 * p + 3 * (1 - t) ** 2 * t * q + 3 * (1 - t) * t ** 2 * r + t ** 3 * s
                            for p, q, r, s in zip(a, b, c, d)))
    return points


def draw_thumbnail(workflow: dict, path: Path, caption: str) -> None:
    """A small diagram of the graph (boxes and links) as the template thumbnail."""
    from PIL import Image, ImageDraw

    scale, pad = 0.3, 16
    nodes = [n for n in workflow["nodes"] if n["type"] != "Note"]
    width = int(max(n["pos"][0] + n["size"][0] for n in nodes) * scale) + 2 * pad
    height = int(max(n["pos"][1] + n["size"][1] for n in nodes) * scale) + 2 * pad + 24
    image = Image.new("RGB", (width, height), (32, 34, 40))
    draw = ImageDraw.Draw(image)
    boxes = {}
    for node in nodes:
        x, y = node["pos"][0] * scale + pad, node["pos"][1] * scale + pad
        w, h = node["size"][0] * scale, node["size"][1] * scale
        boxes[node["id"]] = (x, y, w, h)
    for _, src, src_slot, dst, dst_slot, _ in workflow["links"]:
        sx, sy, sw, _ = boxes[src]
        dx, dy, _, _ = boxes[dst]
        start, end = (sx + sw, sy + (14 + 20 * src_slot) * scale), (dx, dy + (14 + 20 * dst_slot) * scale)
        bend = max(abs(end[0] - start[0]), abs(end[1] - start[1])) * 0.25
        draw.line(bezier(start, (start[0] + bend, start[1]), (end[0] - bend, end[1]), end), fill=(120, 170, 240),
                  width=2)
    for node in nodes:
        x, y, w, h = boxes[node["id"]]
        if node["type"] == "Reroute":
            draw.ellipse([x + w / 2 - 3, y + h / 2 - 3, x + w / 2 + 3, y + h / 2 + 3], fill=(120, 170, 240))
            continue
        draw.rectangle([x, y, x + w, y + h], fill=(58, 62, 72), outline=(150, 150, 160))
        draw.rectangle([x, y, x + w, y + 16], fill=(80, 100, 140))
        draw.text((x + 4, y + 3), node["title"][:int(w / 6)], fill=(240, 240, 240))
    draw.text((pad, height - 28), caption, fill=(250, 210, 120))
    image.save(path, quality=90)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="running ComfyUI with this pack, to write the API twins")
    args = parser.parse_args(argv)
    client = None
    if args.server:
        sys.path.insert(0, str(HERE.parent))
        from sonic.tools.comfy_client import ComfyClient, ui_to_api

        client = ComfyClient(args.server)
        info = client.object_info()
    for name, spec in PRESETS.items():
        workflow = build_ui_workflow(preset_nodes(**spec["nodes"]), spec["note"], spec["workflow_id"])
        ui_file = template_path(name)
        ui_file.write_text(json.dumps(workflow, indent=2) + "\n")
        draw_thumbnail(workflow, ui_file.with_suffix(".jpg"), spec["caption"])
        if client is not None:
            api = ui_to_api(workflow, info)
            (HERE / "api").mkdir(exist_ok=True)
            (HERE / "api" / f"{name}.json").write_text(json.dumps(api, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
