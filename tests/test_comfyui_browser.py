"""The node pack in the real ComfyUI frontend, driven in headless Chromium as a user would drive it.

Every setup: ComfyUI 0.3.75 with its pinned frontend, 0.33.0 with its pinned frontend, 0.33.0 with the
newest frontend we test. The presets are opened through the file chooser and by dropping the file; every
pack node is added from the node search; the fast preset runs from the Run button (64 px, 2 steps, tiny
weights), is cancelled once mid-run, shows a playing video, and that MP4 dropped on a blank canvas gives
the graph back. `SONIC_UPDATE_SCREENSHOT=1` rewrites the README's screenshot from this test.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.request

import pytest

from comfyui_browser import open_comfy_page, screenshot_if_failed, write_user_settings
from comfyui_server import REPO, browser_setups, start_server, ui_preset

pytest_plugins = ["comfyui_server", "comfyui_browser"]
pytestmark = [pytest.mark.comfyui, pytest.mark.browser]

WORKFLOWS = REPO / "workflows"
PRESETS = ["sonic_fast", "sonic_high_quality"]
SCREENSHOT = WORKFLOWS / "screenshots" / "sonic_fast_in_comfyui.png"
SCREENSHOT_SETUP = "0.33.0-pinned-frontend"  # what users of the current core see
FAST = {"min_resolution": 64, "inference_steps": 2, "duration": 1.0, "decode_chunk_size": 8}


def pack_nodes() -> dict[str, str]:
    """Node id -> display name, from the pack's own mapping (read without importing ComfyUI)."""
    import ast

    source = (REPO / "nodes" / "__init__.py").read_text()
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "NODE_DISPLAY_NAME_MAPPINGS":
            return ast.literal_eval(node.value)
    raise AssertionError("NODE_DISPLAY_NAME_MAPPINGS not found")


@pytest.fixture(scope="module", params=browser_setups(), ids=lambda s: s.id)
def ui_server(request, tmp_path_factory):
    """A ComfyUI server with a real frontend, the pack, the tiny zoo and the presets' example inputs."""
    base = tmp_path_factory.mktemp(f"ui_{request.param.id}")
    write_user_settings(base)
    (base / "input").mkdir(parents=True, exist_ok=True)
    for name in ("example_portrait.jpg", "example_speech.wav"):
        shutil.copy(WORKFLOWS / name, base / "input" / name)
    server = start_server(request.param, base)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ui_page(chromium, ui_server):
    """One browser tab per setup (opening the UI costs ~10 s); every test starts from a blank canvas."""
    context, comfy = open_comfy_page(chromium, ui_server)
    try:
        yield comfy
    finally:
        context.close()


@pytest.fixture
def ui(request, ui_page):
    ui_page.console_errors.clear()
    ui_page.page.keyboard.press("Escape")  # whatever a failed test left open
    ui_page.new_blank_canvas()
    try:
        yield ui_page
    finally:
        screenshot_if_failed(request, ui_page)


def test_the_pack_serves_its_frontend_extension(ui_server):
    """WEB_DIRECTORY is exported and ComfyUI serves web/js/sonic_audio.js to the frontend."""
    import json

    with urllib.request.urlopen(f"{ui_server.url}/extensions", timeout=10) as answer:
        extensions = json.load(answer)
    ours = [e for e in extensions if e.startswith("/extensions/comfyui-sonic/")]
    assert ours == ["/extensions/comfyui-sonic/sonic_audio.js"], extensions
    with urllib.request.urlopen(ui_server.url + ours[0], timeout=10) as answer:
        assert b'name: "Sonic.AudioLoader"' in answer.read()


def describe(ui, server) -> str:
    return (f"frontend {ui.frontend_version()} on core {server.setup.core}\nconsole errors: {ui.console_errors[-10:]}"
            f"\nserver log:\n{server.log(4000)}")


def assert_preset_loaded(ui, server, name: str, how: str) -> None:
    nodes = ui.nodes()
    types = sorted(n["type"] for n in nodes)
    assert "SonicAudioLoader" in types and "SonicVideoOutput" in types, f"{name} via {how}: {types}"
    bad = ui.error_nodes()
    assert not bad, f"{name} via {how}: nodes the frontend could not build: {bad}\n{describe(ui, server)}"
    audio = next(n for n in nodes if n["type"] == "SonicAudioLoader")
    assert {"audio", "audioUI", "upload"} <= set(audio["widgets"]), audio


def test_presets_open_without_error_nodes(ui, ui_server):
    """Both presets, through File > Open (the file chooser) and by drag and drop."""
    for name in PRESETS:
        path = ui_preset(name)
        ui.new_blank_canvas()
        ui.load_with_file_chooser(path)
        assert_preset_loaded(ui, ui_server, name, "file chooser")
        if name == "sonic_fast" and (os.environ.get("SONIC_UPDATE_SCREENSHOT") and ui_server.setup.id == SCREENSHOT_SETUP):
            save_readme_screenshot(ui)
        ui.new_blank_canvas()
        ui.drop_file(path, "application/json")
        assert_preset_loaded(ui, ui_server, name, "drop")
    assert not ui.pack_errors(), ui.pack_errors()


def save_readme_screenshot(ui) -> None:
    """The README's picture: the fast preset as loaded, fitted to a 1280x800 window, as a small palette PNG."""
    from PIL import Image

    ui.fit_view()
    ui.page.mouse.move(*ui.empty_canvas_point())  # no hover tooltip in the picture
    ui.page.wait_for_timeout(800)
    raw = ui.screenshot(SCREENSHOT.with_suffix(".raw.png"))
    with Image.open(raw) as image:
        image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(SCREENSHOT, optimize=True)
    raw.unlink()
    print(f"\nwrote {SCREENSHOT} ({SCREENSHOT.stat().st_size} bytes)")


def test_every_pack_node_can_be_added_from_the_search(ui, ui_server):
    ui.new_blank_canvas()
    failures = []
    for node_id, display in pack_nodes().items():
        added = ui.add_from_search(display.split(" (")[0])  # what a user types: "Sonic PostProcess"
        if added is None or added["type"] != node_id:
            failures.append(f"{display!r}: search added {added}")
            continue
        bad = ui.error_nodes()
        if bad:
            failures.append(f"{display!r}: built with errors {bad}")
        ui.remove_node(added["id"])
    assert not failures, "\n".join(failures) + "\n" + describe(ui, ui_server)
    assert not ui.pack_errors(), ui.pack_errors()


def test_audio_upload_button_uploads_and_the_player_plays(ui, ui_server):
    ui.new_blank_canvas()
    ui.load_with_file_chooser(ui_preset("sonic_fast"))
    audio_node = next(n for n in ui.nodes() if n["type"] == "SonicAudioLoader")
    with ui.page.expect_file_chooser(timeout=10_000) as chooser:
        ui.click_widget(audio_node["id"], "upload")
    chooser.value.set_files(str(ui_server.base / "input" / "speech.wav"))
    ui.page.wait_for_function("""() => {
        const node = app.graph._nodes.find((n) => n.type === 'SonicAudioLoader');
        return node.widgets.find((w) => w.name === 'audio').value === 'speech.wav';
    }""", timeout=20_000)
    player = ui.page.wait_for_function("""() => {
        // by file name: the preset's own example_speech.wav player may still be on the page
        const el = [...document.querySelectorAll('audio')].find((a) => a.currentSrc || a.src
            ? new URL(a.currentSrc || a.src).searchParams.get('filename') === 'speech.wav' : false);
        return el && el.readyState >= 2 && el.duration > 1 ? {duration: el.duration, src: el.currentSrc} : null;
    }""", timeout=20_000).json_value()
    assert abs(player["duration"] - 1.2) < 0.1, player
    playing = ui.page.evaluate("""async () => {
        const el = [...document.querySelectorAll('audio')].find((a) => a.currentSrc || a.src
            ? new URL(a.currentSrc || a.src).searchParams.get('filename') === 'speech.wav' : false);
        await el.play();
        await new Promise((r) => setTimeout(r, 400));
        const t = el.currentTime; el.pause(); return t;
    }""")
    assert playing > 0.05, f"the player did not advance ({playing} s)"
    assert not ui.error_nodes()
    assert not ui.pack_errors(), ui.pack_errors()


def test_fast_preset_runs_from_the_run_button_cancels_and_reopens_from_its_mp4(ui, ui_server, tmp_path):
    ui.page.evaluate("() => { window.__sonic.length = 0; }")
    ui.load_with_file_chooser(ui_preset("sonic_fast"))

    # 1. Cancel mid-run: many steps, Cancel once the sampler reports progress.
    ui.set_widgets({**FAST, "inference_steps": 60})
    ui.click_run()
    ui.wait_for_event("(e) => e.type === 'progress' && e.data.max === 60 && e.data.value >= 1", timeout=180)
    ui.click_cancel()
    clicked = time.monotonic()
    end = ui.wait_for_event("(e) => ['execution_interrupted', 'execution_success', 'execution_error'].includes(e.type)",
                            timeout=60)
    assert end["type"] == "execution_interrupted", f"{end}\n{describe(ui, ui_server)}"
    steps = [e["data"]["value"] for e in ui.events() if e["type"] == "progress" and e["data"].get("max") == 60]
    assert max(steps) < 60, f"sampling ran to the end despite Cancel: {steps}"
    assert time.monotonic() - clicked < 30

    # 2. The next run works: 64 px, 2 steps, from the Run button, to a playing video on the output node.
    ui.page.evaluate("() => { window.__sonic.length = 0; }")
    ui.set_widgets(FAST)
    ui.click_run()
    end = ui.wait_for_event("(e) => ['execution_interrupted', 'execution_success', 'execution_error'].includes(e.type)",
                            timeout=300)
    assert end["type"] == "execution_success", f"{end}\n{describe(ui, ui_server)}"
    video = ui.page.wait_for_function("""() => [...document.querySelectorAll('video')]
        .map((v) => ({src: v.currentSrc || v.src, readyState: v.readyState, width: v.videoWidth}))
        .find((v) => v.src.includes('.mp4') && v.readyState >= 2) || null""", timeout=30_000).json_value()
    assert video["width"] >= 64, video

    # 3. That MP4 dropped on a blank canvas gives the graph back (its `workflow` metadata tag).
    mp4 = tmp_path / video["src"].split("filename=")[1].split("&")[0]
    with urllib.request.urlopen(video["src"], timeout=30) as answer:
        mp4.write_bytes(answer.read())
    ran = {n["id"]: n for n in ui.nodes()}
    ui.new_blank_canvas()
    ui.drop_file(mp4, "video/mp4")
    back = {n["id"]: n for n in ui.nodes()}
    # Without a `workflow` tag, newer frontends make a LoadVideo node of the file and older ones do nothing.
    assert [n["type"] for n in back.values()] not in ([], ["LoadVideo"]), (
        f"dropping {mp4.name} gave {sorted(n['type'] for n in back.values())}, not the graph: the MP4 has no "
        f"`workflow` metadata tag")
    assert {i: n["type"] for i, n in back.items()} == {i: n["type"] for i, n in ran.items()}
    prepare = next(n for n in back.values() if n["type"] == "SONIC_PreData")
    assert prepare["values"]["min_resolution"] == 64, prepare
    assert not ui.error_nodes()
    assert not ui.pack_errors(), ui.pack_errors()
