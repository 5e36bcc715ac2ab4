"""`python -m sonic queue`: workflow conversion, overrides, job files, and a real batch against ComfyUI."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from comfyui_server import REPO, write_test_media

from sonic.cli import main
from sonic.tools.comfy_client import (apply_overrides, fill_media, parse_set_options, read_jobs, ui_to_api,
                                video_outputs)
from sonic.errors import ParameterError, SonicError

pytest_plugins = ["comfyui_server"]

OBJECT_INFO = {  # the shape /object_info returns, for three small nodes
    "Sampler": {"input": {"required": {"model": ["MODEL", {}], "seed": ["INT", {"default": 0, "control_after_generate": True}],
                                       "steps": ["INT", {"default": 20}], "fps": ["FLOAT", {"default": 12.5, "forceInput": True}],
                                       "mode": [["a", "b"], {"default": "a"}]},
                          "optional": {"strength": ["FLOAT", {"default": 1.0}]}},
                "input_order": {"required": ["model", "seed", "steps", "fps", "mode"], "optional": ["strength"]},
                "output": ["LATENT"], "display_name": "Sampler"},
    "Loader": {"input": {"required": {"file": [["x.png"], {"image_upload": True}], "scale": ["FLOAT", {"default": 1.0}]}},
               "input_order": {"required": ["file", "scale"]}, "output": ["MODEL", "FLOAT"], "display_name": "Loader"},
    "Passthrough": {"input": {"required": {"model": ["MODEL", {}]}}, "input_order": {"required": ["model"]},
                    "output": ["MODEL"], "display_name": "Passthrough"},
}


def ui_node(node_id, node_type, values=None, inputs=(), mode=0, title=None):
    node = {"id": node_id, "type": node_type, "mode": mode, "inputs": [dict(i) for i in inputs],
            "widgets_values": values if values is not None else []}
    if title:
        node["title"] = title
    return node


def test_ui_to_api_follows_reroutes_primitives_bypasses_and_skips_hidden_values():
    workflow = {
        "nodes": [
            ui_node(1, "Loader", ["face.png", "image", 2.0]),
            ui_node(2, "Reroute", inputs=[{"name": "", "type": "*", "link": 1}]),
            ui_node(3, "Passthrough", inputs=[{"name": "model", "type": "MODEL", "link": 2}], mode=4),
            ui_node(4, "PrimitiveNode", [33]),
            ui_node(5, "Sampler", [7, "randomize", 30, "b", 0.5], title="My sampler", inputs=[
                {"name": "model", "type": "MODEL", "link": 3},
                {"name": "fps", "type": "FLOAT", "link": 5},
                {"name": "steps", "type": "INT", "link": 4, "widget": {"name": "steps"}}]),
            ui_node(6, "Note", ["just a note"]),
            ui_node(7, "Sampler", [1, "fixed", 2, "a", 1.0], mode=2),
        ],
        "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 5, 0, "MODEL"],
                  [4, 4, 0, 5, 2, "INT"], [5, 1, 1, 5, 1, "FLOAT"]],
    }
    api = ui_to_api(workflow, OBJECT_INFO)
    assert set(api) == {"1", "5"}  # reroute, bypassed, primitive, note and muted nodes vanish
    assert api["1"]["inputs"] == {"file": "face.png", "scale": 2.0}  # the upload widget value is skipped
    assert api["5"]["inputs"] == {"seed": 7, "steps": 33, "mode": "b", "strength": 0.5, "model": ["1", 0],
                                  "fps": ["1", 1]}
    assert api["5"]["_meta"]["title"] == "My sampler"


def test_ui_to_api_names_unknown_node_types():
    with pytest.raises(ParameterError, match="NotInstalled"):
        ui_to_api({"nodes": [ui_node(1, "NotInstalled")], "links": []}, OBJECT_INFO)


def test_set_overrides_every_node_with_that_input_and_keeps_types():
    prompt = json.loads((REPO / "workflows" / "api" / "sonic_fast.json").read_text())
    apply_overrides(prompt, parse_set_options(["inference_steps=10", "min_resolution=384", "crop=false",
                                               "dynamic_scale=1.2", "filename_prefix=batch/run"]))
    by_class = {n["class_type"]: n["inputs"] for n in prompt.values()}
    assert by_class["SonicInference"]["inference_steps"] == 10
    assert by_class["SONIC_PreData"]["min_resolution"] == 384 and by_class["SONIC_PreData"]["crop"] is False
    assert by_class["SonicInference"]["dynamic_scale"] == 1.2
    assert by_class["SonicVideoOutput"]["filename_prefix"] == "batch/run"
    with pytest.raises(ParameterError, match="no node of the workflow has a widget input named 'stepz'"):
        apply_overrides(prompt, {"stepz": "3"})
    with pytest.raises(ParameterError, match="expected a int"):
        apply_overrides(prompt, {"inference_steps": "ten"})
    with pytest.raises(ParameterError, match="NAME=VALUE"):
        parse_set_options(["inference_steps"])
    fill_media(prompt, "sonic_queue/a.png", "sonic_queue/b.wav")
    assert by_class["SonicImageLoader"]["image"] == "sonic_queue/a.png"
    assert by_class["SonicAudioLoader"]["audio"] == "sonic_queue/b.wav"


def test_jobs_files_csv_and_json(tmp_path):
    (tmp_path / "jobs.csv").write_text("image,audio,name\nimg/a.png,snd/a.wav,\nimg/b.png,snd/b.wav,custom\n")
    (tmp_path / "jobs.json").write_text(json.dumps([{"image": "a.png", "audio": "a.wav"}]))
    csv_jobs = read_jobs(tmp_path / "jobs.csv")
    assert [j.image for j in csv_jobs] == [tmp_path / "img/a.png", tmp_path / "img/b.png"]
    assert [j.name for j in csv_jobs] == ["a__a", "custom"]
    assert read_jobs(tmp_path / "jobs.json")[0].audio == tmp_path / "a.wav"
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "a.png"}]))
    with pytest.raises(ParameterError, match="needs 'image' and 'audio'"):
        read_jobs(tmp_path / "bad.json")


def test_video_outputs_finds_mp4_entries_only():
    outputs = {"8": {"images": [{"filename": "Sonic_00001_.mp4", "subfolder": "sonic", "type": "output"}],
                     "animated": [True]},
               "9": {"images": [{"filename": "preview.png", "subfolder": "", "type": "temp"}]}}
    assert [e["filename"] for e in video_outputs(outputs)] == ["Sonic_00001_.mp4"]


class _LateHistoryServer:
    """An HTTP server whose /history answers `{}` for the first few asks, as ComfyUI does between sending
    `execution_success` on the websocket and filing the history entry (main.py calls task_done after)."""

    def __init__(self, empty_answers: int):
        import http.server
        import threading

        owner = self
        self.asks = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                owner.asks += 1
                body = {} if owner.asks <= empty_answers else {"p1": {"outputs": {"7": {"animated": [True]}},
                                                                      "status": {"completed": True}}}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_history_waits_for_the_entry_comfyui_files_after_execution_success():
    from sonic.tools.comfy_client import ComfyClient, ComfyConnectionError

    server = _LateHistoryServer(empty_answers=3)
    try:
        entry = ComfyClient(server.url).history("p1", wait=10.0, poll=0.01)
        assert entry["outputs"]["7"]["animated"] == [True] and server.asks == 4
    finally:
        server.close()
    never = _LateHistoryServer(empty_answers=10**9)
    try:
        with pytest.raises(ComfyConnectionError, match="no history entry for it after"):
            ComfyClient(never.url).history("p1", wait=0.2, poll=0.01)
    finally:
        never.close()


def test_unreachable_server_is_a_clear_error_before_any_work(tmp_path, capsys):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    media = write_test_media(tmp_path / "media")
    assert main(["queue", "--server", f"http://127.0.0.1:{port}", "--workflow", str(REPO / "workflows/api/sonic_fast.json"),
                 "--image", str(media["portrait"]), "--audio", str(media["audio"]), "--out", str(tmp_path / "o")]) == 2
    assert "cannot reach the ComfyUI server" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing was written
    assert main(["queue", "--server", f"http://127.0.0.1:{port}", "--workflow", "x.json", "--image", "a", "--audio",
                 "b", "--out", str(tmp_path / "o")]) == 2


@pytest.mark.comfyui
def test_batch_of_four_jobs_with_one_broken_audio(comfy_server, tmp_path, capsys):
    import numpy as np
    import soundfile as sf
    from PIL import Image, ImageOps

    from sonic.media.probe import probe

    media = write_test_media(tmp_path / "media")
    mirrored = tmp_path / "media" / "portrait_mirrored.png"
    ImageOps.mirror(Image.open(media["portrait"])).save(mirrored)
    quieter = tmp_path / "media" / "speech_quieter.wav"
    samples, rate = sf.read(media["audio"], dtype="float32")
    sf.write(quieter, (samples * 0.6).astype(np.float32), rate)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("image,audio\n"
                    f"{media['portrait']},{media['audio']}\n"
                    f"{mirrored},{media['audio']}\n"
                    f"{media['portrait']},{media['broken_audio']}\n"
                    f"{media['portrait']},{quieter}\n")
    out = tmp_path / "videos"
    code = main(["queue", "--server", comfy_server.url, "--workflow", str(REPO / "workflows" / "sonic_fast.json"),
                          "--jobs", str(jobs), "--out", str(out), "--quiet", "--set", "min_resolution=64",
                          "--set", "inference_steps=2", "--set", "duration=1.0", "--timeout", "300"])
    printed = capsys.readouterr().out
    assert code == 1, printed
    videos = sorted(out.glob("*.mp4"))
    assert [v.name for v in videos] == ["portrait__speech.mp4", "portrait__speech_quieter.mp4",
                                        "portrait_mirrored__speech.mp4"], printed
    for video in videos:
        facts = probe(video)
        assert facts["video_codec"] == "h264" and facts["audio_codec"] == "aac" and facts["frame_count"] == 25  # 1.0 s of audio at 25 fps
    failure = next(line for line in printed.splitlines() if "FAIL" in line)
    assert "portrait__broken" in failure and "AudioError" in failure and "broken-" in failure, printed
    assert "3 of 4 jobs succeeded, 1 failed" in printed
