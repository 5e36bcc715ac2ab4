"""Sonic Video Output embeds the graph the way core SaveVideo does, so a dropped MP4 reopens its workflow."""

from __future__ import annotations

import json

import pytest

from comfyui_server import ComfyServer, final_message, make_base_directory, run_prompt, write_test_media

pytest_plugins = ["comfyui_server"]
pytestmark = pytest.mark.comfyui

# A UI-format graph as the frontend sends it in extra_data.extra_pnginfo (content is opaque to the server).
UI_WORKFLOW = {"last_node_id": 2, "nodes": [{"id": 1, "type": "SonicImageLoader", "widgets_values": ["portrait.png"]},
                                            {"id": 2, "type": "SonicVideoOutput", "title": "quote \" = ; # \\ ü"}],
               "links": [], "version": 0.4}


def still_clip_prompt(prefix: str) -> dict:
    """Three copies of the test portrait written as an MP4: no model, no sampling."""
    return {"1": {"class_type": "SonicImageLoader", "inputs": {"image": "portrait.png"}},
            "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}},
            "3": {"class_type": "SonicVideoOutput", "inputs": {"frames": ["2", 0], "fps": 25.0, "crf": 30,
                                                               "filename_prefix": prefix, "preset": "ultrafast"}}}


def written_tags(server, prompt: dict) -> dict:
    import av

    prompt_id, messages = run_prompt(server, prompt, extra_data={"extra_pnginfo": {"workflow": UI_WORKFLOW}})
    assert final_message(messages)["type"] == "execution_success", f"{final_message(messages)}\n{server.log()}"
    from sonic.tools.comfy_client import ComfyClient

    entry = ComfyClient(server.url).history(prompt_id)["outputs"]["3"]["images"][0]
    with av.open(str(server.base / "output" / entry["subfolder"] / entry["filename"])) as container:
        return dict(container.metadata)


def test_mp4_carries_prompt_and_workflow_as_their_own_tags(comfy_server):
    prompt = still_clip_prompt("meta/on")
    tags = written_tags(comfy_server, prompt)
    assert json.loads(tags["workflow"]) == UI_WORKFLOW
    embedded = json.loads(tags["prompt"])  # the server adds its own keys (is_changed) to each node
    assert {k: (v["class_type"], v["inputs"]) for k, v in embedded.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()}
    provenance = json.loads(tags["comment"])
    assert provenance["ai_generated"] is True and "workflow" not in provenance


def test_disable_metadata_leaves_out_the_graph_but_keeps_the_ai_notice(tmp_path, comfy_paths):
    base = make_base_directory(tmp_path / "base", with_models=False)
    write_test_media(base / "input")
    server = ComfyServer(comfy_paths[0], base, extra_args=("--disable-metadata",))
    try:
        server.wait_ready()
        tags = written_tags(server, still_clip_prompt("meta/off"))
    finally:
        server.stop()
    assert "workflow" not in tags and "prompt" not in tags, sorted(tags)
    assert json.loads(tags["comment"])["ai_generated"] is True
