"""The presets' layout as the editor draws it: no link runs through a node that is not one of its ends.

Links are drawn like the litegraph canvas: a cubic curve from the output slot (right edge) to the input
slot (left edge) with horizontal handles a quarter of the distance long; slot i sits 14 + 20 i px below
the node's top; a node's box includes its 30 px title bar (Reroutes have none)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
TITLE, SLOT_TOP, SLOT_STEP, MARGIN = 30, 14, 20, 2


def build_presets():
    spec = importlib.util.spec_from_file_location("build_presets", WORKFLOWS / "build_presets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def box(node) -> tuple[float, float, float, float]:
    (x, y), (w, h) = node["pos"], node["size"]
    top = y if node["type"] == "Reroute" else y - TITLE
    return x - MARGIN, top - MARGIN, x + w + MARGIN, y + h + MARGIN


def curve(start, end, steps: int = 200):
    bend = math.dist(start, end) * 0.25
    a, b, c, d = start, (start[0] + bend, start[1]), (end[0] - bend, end[1]), end
    for k in range(1, steps):
        t = k / steps
        yield tuple((1 - t) ** 3 * p + 3 * (1 - t) ** 2 * t * q + 3 * (1 - t) * t ** 2 * r + t ** 3 * s
                    for p, q, r, s in zip(a, b, c, d))


@pytest.mark.parametrize("name", ["sonic_fast", "sonic_high_quality"])
def test_no_link_runs_through_a_node(name):
    workflow = json.loads(build_presets().template_path(name).read_text())
    nodes = {n["id"]: n for n in workflow["nodes"]}
    crossings = []
    for link_id, src, src_slot, dst, dst_slot, _ in workflow["links"]:
        s, d = nodes[src], nodes[dst]
        start = (s["pos"][0] + s["size"][0], s["pos"][1] + SLOT_TOP + SLOT_STEP * src_slot)
        end = (d["pos"][0], d["pos"][1] + SLOT_TOP + SLOT_STEP * dst_slot)
        for other in nodes.values():
            if other["id"] in (src, dst):
                continue
            x1, y1, x2, y2 = box(other)
            if any(x1 < x < x2 and y1 < y < y2 for x, y in curve(start, end)):
                crossings.append(f"link {link_id} ({s['type']} -> {d['type']}) runs through node {other['id']} "
                                 f"({other['type']})")
    assert not crossings, "\n".join(crossings)
    assert not [n for a in nodes.values() for n in nodes.values() if a["id"] < n["id"] and overlap(box(a), box(n))]


def overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_the_old_layout_would_fail_this_check():
    """The check itself: a link from the loader straight to Sonic Decode crosses the Prepare column."""
    loader = {"id": 1, "type": "SonicModelLoader", "pos": [40, 60], "size": [320, 154]}
    prepare = {"id": 4, "type": "SONIC_PreData", "pos": [420, 60], "size": [340, 250]}
    decode = {"id": 6, "type": "SonicLatentDecoder", "pos": [820, 60], "size": [300, 102]}
    start = (360, 60 + SLOT_TOP)
    end = (decode["pos"][0], decode["pos"][1] + SLOT_TOP)
    x1, y1, x2, y2 = box(prepare)
    assert any(x1 < x < x2 and y1 < y < y2 for x, y in curve(start, end)) and loader
