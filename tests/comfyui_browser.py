"""Driving the real ComfyUI frontend in headless Chromium (Playwright for Python), as a user would.

The browser is Debian's `chromium` (apt), started through `executable_path`: Playwright's own browser
download is never used. Host names other than 127.0.0.1 do not resolve inside this browser, so a page
can reach nothing but the test server. Console errors and uncaught page errors are collected; a
failing test saves a screenshot under the temp folder and prints its path.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

# The frontend asks the user's settings first: skip the first-run Templates dialog a new user gets.
FIRST_RUN_SETTINGS = {"Comfy.TutorialCompleted": True}
FAILURE_SHOTS = Path(tempfile.gettempdir()) / "sonic-browser-failures"


def chromium_path() -> str:
    """Debian's Chromium (SONIC_CHROMIUM overrides); a clear failure when it is missing."""
    path = os.environ.get("SONIC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no chromium on PATH: `apt-get install -y chromium` (what .ci/run does) or set SONIC_CHROMIUM")
    return path


def write_user_settings(base: Path) -> None:
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(FIRST_RUN_SETTINGS))


class ComfyPage:
    """One browser tab on the ComfyUI frontend, with the few gestures the tests need."""

    def __init__(self, page, url: str):
        self.page, self.url = page, url
        self.console_errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.console_errors.append(f"page error: {e}"))

    # ------------------------------------------------------------------ opening
    def open(self) -> None:
        self.page.goto(self.url)
        self.page.wait_for_function("() => window.app?.graph && window.LiteGraph && window.comfyAPI?.api",
                                    timeout=90_000)
        # The app shell (keybindings, menus) mounts after the graph: wait for the Run button, then settle.
        self.page.locator('[data-testid="queue-button"]').first.wait_for(state="visible", timeout=60_000)
        self.page.wait_for_timeout(1500)
        # Events of the running prompt, read back by the tests (the socket the UI itself uses).
        self.page.evaluate("""() => {
            window.__sonic = [];
            const api = window.comfyAPI.api.api;
            for (const type of ['execution_start', 'execution_success', 'execution_error', 'execution_interrupted',
                                'progress', 'executed'])
                api.addEventListener(type, (e) => window.__sonic.push({type, data: e.detail, at: performance.now()}));
        }""")
        self.page.keyboard.press("Escape")  # any dialog a frontend version still shows on start

    def frontend_version(self) -> str:
        return self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || ''")

    # ------------------------------------------------------------------ loading workflows
    def load_with_file_chooser(self, path: Path) -> None:
        """Workflow > Open (Ctrl+O) and pick the file in the file chooser."""
        # Some frontend versions drop the shortcut now and then (no chooser appears): the user presses again.
        # A dialog or toast left open can hold the focus: close it first, as a person would.
        for attempt in range(5):
            self.click_empty_canvas()
            self.page.wait_for_timeout(300)  # let the click's focus change land before the shortcut
            try:  # the chooser opens well within a second when the shortcut is taken
                with self.page.expect_file_chooser(timeout=3_000) as chooser:
                    self.page.keyboard.press("Control+o")
                break
            except PlaywrightTimeout:
                if attempt == 4:
                    raise
                self.page.keyboard.press("Escape")
                self.page.wait_for_timeout(500)
        chooser.value.set_files(str(path))
        self.wait_for_graph_change()

    def drop_file(self, path: Path, mime: str) -> None:
        """Drag a file from the desktop onto the canvas."""
        payload = base64.b64encode(path.read_bytes()).decode()
        transfer = self.page.evaluate_handle("""([b64, name, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: mime}));
            return transfer;
        }""", [payload, path.name, mime])
        self.page.dispatch_event("#graph-canvas", "dragover", {"dataTransfer": transfer})
        self.page.dispatch_event("#graph-canvas", "drop", {"dataTransfer": transfer})
        self.wait_for_graph_change()

    def wait_for_graph_change(self, settle: float = 1.0) -> None:
        time.sleep(settle)  # loading is asynchronous and has no single completion event across versions

    def new_blank_canvas(self) -> None:
        self.page.evaluate("() => app.graph.clear()")

    # ------------------------------------------------------------------ reading the graph
    def nodes(self) -> list[dict]:
        """Every node: id, type, the class the frontend built it as, error flag, widget names and values."""
        return self.page.evaluate("""() => app.graph._nodes.map((n) => ({
            id: String(n.id), type: n.type, comfyClass: n.comfyClass ?? n.constructor?.comfyClass ?? null,
            hasErrors: !!n.has_errors, mode: n.mode,
            widgets: (n.widgets || []).map((w) => w.name),
            values: Object.fromEntries((n.widgets || []).filter((w) => w.serialize !== false)
                .map((w) => [w.name, (typeof w.value === 'object' && w.value !== null) ? null : w.value])),
        }))""")

    def prompt_class_types(self) -> dict[str, str | None]:
        """node id -> class_type of the prompt the UI would queue (app.graphToPrompt())."""
        return self.page.evaluate("""async () => {
            const {output} = await app.graphToPrompt();
            return Object.fromEntries(Object.entries(output).map(([id, n]) => [id, n.class_type ?? null]));
        }""")

    def error_nodes(self, virtual=("Note", "MarkdownNote", "Reroute", "PrimitiveNode")) -> list[dict]:
        """Nodes the frontend could not build: flagged, of another class than their type, or not queueable."""
        prompt = self.prompt_class_types()
        bad = []
        for node in self.nodes():
            if node["type"] in virtual or node["mode"] in (2, 4):
                continue
            if node["hasErrors"] or node["comfyClass"] != node["type"] or prompt.get(node["id"]) != node["type"]:
                bad.append({**node, "in_prompt": prompt.get(node["id"], "missing")})
        return bad

    # ------------------------------------------------------------------ gestures on the canvas
    def canvas_point(self, graph_x: float, graph_y: float) -> tuple[float, float]:
        """Page coordinates of a point in graph space (the canvas may be panned and zoomed)."""
        return tuple(self.page.evaluate("""([x, y]) => {
            const [cx, cy] = app.canvas.ds.convertOffsetToCanvas([x, y]);
            const rect = app.canvas.canvas.getBoundingClientRect();
            return [rect.left + cx, rect.top + cy];
        }""", [graph_x, graph_y]))

    def click_empty_canvas(self) -> tuple[float, float]:
        """Click once, for focus, where no node is."""
        x, y = self.empty_canvas_point()
        self.page.mouse.click(x, y)
        return x, y

    def empty_canvas_point(self) -> tuple[float, float]:
        """A point of the canvas (page coordinates) that no node covers."""
        return self.page.evaluate("""() => {
            const rect = app.canvas.canvas.getBoundingClientRect();
            for (let fy = 0.85; fy > 0.3; fy -= 0.05)
                for (let fx = 0.35; fx < 0.8; fx += 0.05) {
                    const [px, py] = [rect.left + rect.width * fx, rect.top + rect.height * fy];
                    const [gx, gy] = app.canvas.ds.convertCanvasToOffset([px - rect.left, py - rect.top]);
                    if (!app.graph.getNodeOnPos(gx, gy)) return [px, py];
                }
            return [rect.left + rect.width / 2, rect.top + rect.height * 0.9];
        }""")

    def add_from_search(self, display_name: str) -> dict | None:
        """Double-click the empty canvas, type the node's name in the search box, press Enter: the new node."""
        before = {n["id"] for n in self.nodes()}
        box = self.page.locator(".comfy-vue-node-search-container input:visible, [role='dialog'] input:visible, "
                                ".litesearchbox input:visible").first
        for attempt in range(3):  # a double-click right after other input is sometimes not taken: try again
            x, y = self.empty_canvas_point()
            # After a search the canvas takes the first press for itself (focus): give it a click,
            # then double-click once the double-click interval has passed.
            self.page.mouse.click(x, y)
            self.page.wait_for_timeout(400)
            self.page.mouse.dblclick(x, y)
            try:
                box.wait_for(state="visible", timeout=2_500)
                break
            except PlaywrightTimeout:
                if attempt == 2:
                    raise
        # Some versions open the search box without focusing its field: click into it, as a user would.
        box.click()
        box.fill(display_name)
        self.page.wait_for_function("(text) => document.activeElement?.value === text", arg=display_name,
                                    timeout=10_000)
        self.page.wait_for_timeout(800)  # the search is debounced
        count = len(before)
        self.page.keyboard.press("Enter")
        try:  # the node appears within a frame or two; wait for it instead of a fixed pause
            self.page.wait_for_function("(count) => app.graph._nodes.length > count", arg=count, timeout=3_000)
            self.page.wait_for_timeout(300)  # let the frontend finish building its widgets
        except PlaywrightTimeout:
            pass  # nothing was added: reported by the caller
        added = [n for n in self.nodes() if n["id"] not in before]
        return added[0] if len(added) == 1 else None

    def remove_node(self, node_id: str) -> None:
        self.page.evaluate("(id) => app.graph.remove(app.graph.getNodeById(Number(id)) ?? app.graph.getNodeById(id))",
                           node_id)

    def click_widget(self, node_id: str, widget: str) -> None:
        """Click a canvas-drawn widget (e.g. an upload button) at its place on the node."""
        gx, gy = self.page.evaluate("""([id, name]) => {
            const node = app.graph.getNodeById(Number(id)) ?? app.graph.getNodeById(id);
            const w = node.widgets.find((w) => w.name === name);
            const y = w.y ?? w.last_y;
            return [node.pos[0] + node.size[0] / 2, node.pos[1] + y + 10];
        }""", [node_id, widget])
        self.page.mouse.click(*self.canvas_point(gx, gy))

    def set_widgets(self, values: dict) -> None:
        """Set widget values by name on every node that has them (what typing into the widget does)."""
        self.page.evaluate("""(values) => {
            for (const node of app.graph._nodes)
                for (const w of node.widgets || [])
                    if (w.name in values) { w.value = values[w.name]; w.callback?.(w.value, app.canvas, node); }
            app.graph.setDirtyCanvas(true, true);
        }""", values)

    def fit_view(self) -> None:
        self.page.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        self.page.wait_for_timeout(300)

    # ------------------------------------------------------------------ running
    def click_run(self) -> None:
        # The test id sits on the button (newer frontends) or on the split button around it (1.32).
        self.page.locator('button[data-testid="queue-button"], [data-testid="queue-button"] button').first.click()

    def click_cancel(self) -> None:
        self.page.locator('button[aria-label="Cancel current run"]').first.click()

    def events(self) -> list[dict]:
        return self.page.evaluate("() => window.__sonic")

    def wait_for_event(self, predicate_js: str, timeout: float) -> dict:
        """The first recorded prompt event for which the JS predicate `(e) => ...` holds."""
        handle = self.page.wait_for_function(f"() => window.__sonic.find({predicate_js})", timeout=timeout * 1000,
                                             polling=200)
        return handle.json_value()

    def videos(self) -> list[dict]:
        return self.page.evaluate("""() => [...document.querySelectorAll('video')].map((v) => ({
            src: v.currentSrc || v.src, readyState: v.readyState, width: v.videoWidth, height: v.videoHeight}))""")

    # ------------------------------------------------------------------ diagnostics
    def pack_errors(self, words=("sonic",)) -> list[str]:
        """Console errors that name this pack (its nodes, its extension file). The frontend's own look-ups of
        the pack on the registry (comfyui-sonic in a URL), blocked here by the page's CSP, are not ours."""
        return [e for e in self.console_errors if any(w in e.lower() for w in words)
                and "content security policy" not in e.lower()]

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item, so that the page fixture knows whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(),
            args=["--autoplay-policy=no-user-gesture-required", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                  "--disable-gpu", "--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def open_comfy_page(chromium, server, viewport=(1280, 800)):
    """A fresh browser context on `server`, opened and ready: (context, ComfyPage)."""
    context = chromium.new_context(viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=False)
    comfy = ComfyPage(context.new_page(), server.url)
    comfy.open()
    return context, comfy


def screenshot_if_failed(request, comfy: ComfyPage) -> None:
    """After a test: save a screenshot of the page under the temp folder if the test failed, and say where."""
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.nodeid.split("::")[-1])
    try:
        shot = comfy.screenshot(FAILURE_SHOTS / f"{name}.png")
        print(f"\nscreenshot of the failed browser test: {shot}")
    except Exception as exc:  # a crashed page must not hide the test's own failure
        print(f"\nno screenshot: {exc}")
