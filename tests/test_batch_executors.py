"""`python -m sonic batch --executor comfyui | ray`: two real ComfyUI servers sharing a manifest, and
a local Ray cluster surviving a dead actor. Same records and resume as the local executor."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from comfyui_server import ComfyServer, make_base_directory, write_test_media
from helpers import speech_like
from test_batch import FAST, check_output, leftovers, report, run_batch, sonic_env, write_csv

pytest_plugins = ["comfyui_server"]


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory, comfy_paths):
    servers = []
    try:
        for _ in range(2):
            base = make_base_directory(tmp_path_factory.mktemp("comfy_fleet"))
            servers.append(ComfyServer(comfy_paths[0], base))
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.mark.comfyui
def test_two_comfyui_servers_share_a_manifest_and_a_rerun_skips_everything(two_servers, tmp_path):
    media = write_test_media(tmp_path / "inputs")
    for index, seconds in enumerate((0.4, 0.5, 0.6, 0.45)):
        sf.write(tmp_path / "inputs" / f"talk{index}.wav", speech_like(seconds, seed=index), 16_000)
    jobs = write_csv(tmp_path / "inputs" / "jobs.csv",
                     [{"image": media["portrait"].name, "audio": f"talk{i}.wav", "output": f"v{i}.mp4"}
                      for i in range(4)])
    out = tmp_path / "out"
    servers = [arg for server in two_servers for arg in ("--server", server.url)]
    args = [jobs, "--out-dir", out, "--executor", "comfyui", *servers, "--min-resolution", "64", "--steps", "1",
            "--quiet", "--timeout", "300"]
    result = run_batch(*args)
    assert result.returncode == 0, result.stdout + result.stderr + two_servers[0].log(3000)
    got = report(out)
    assert [got[n]["status"] for n in range(2, 6)] == ["done"] * 4
    records = [json.loads(p.read_text()) for p in (out / ".sonic-batch" / "jobs").glob("*.json")]
    assert {r["server"] for r in records} == {s.url for s in two_servers}  # both servers received jobs
    for index in range(4):
        check_output(out / f"v{index}.mp4", tmp_path / "inputs" / f"talk{index}.wav")
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}

    again = run_batch(*args)
    assert again.returncode == 0, again.stderr
    got = report(out)
    assert all(got[n]["skipped"] for n in range(2, 6)) and "done   " not in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == mtimes
    assert leftovers(out) == []


def test_comfyui_rows_must_fit_the_workflow_before_anything_runs(two_servers, tmp_path):
    from sonic.cli import main

    media = write_test_media(tmp_path / "inputs")
    jobs = write_csv(tmp_path / "inputs" / "jobs.csv", [{"image": media["portrait"].name, "audio": "speech.wav",
                                                          "max_image_pixels": "1000000"}])
    out = tmp_path / "out"
    assert main(["batch", str(jobs), "--out-dir", str(out), "--executor", "comfyui", "--server", two_servers[0].url,
                 "--quiet"]) == 2
    assert not out.exists()


def test_ray_local_cluster_runs_three_jobs_and_survives_a_dead_actor(tmp_path, tiny_zoo, portrait):
    import ray  # part of the test extra: the executor is tested, never skipped
    from PIL import Image

    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.fromarray(portrait).save(folder / "anna.png")
    for index, seconds in enumerate((0.3, 0.4, 0.5)):
        sf.write(folder / f"talk{index}.wav", speech_like(seconds, seed=index), 16_000)
    jobs = write_csv(folder / "jobs.csv", [{"image": "anna.png", "audio": f"talk{i}.wav", "output": f"r{i}.mp4"}
                                           for i in range(3)])
    out = tmp_path / "out"
    # The actor running r1.mp4 ends its process (os._exit) mid-job; Ray restarts it and retries the job.
    env = sonic_env(SONIC_BATCH_TEST_CRASH="r1.mp4", SONIC_BATCH_RAY_CPUS="2", RAY_DEDUP_LOGS="0")
    result = run_batch(jobs, "--out-dir", out, "--models", tiny_zoo, "--executor", "ray", *FAST, env=env)
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    got = report(out)
    assert [got[n]["status"] for n in (2, 3, 4)] == ["done"] * 3
    for index in range(3):
        check_output(out / f"r{index}.mp4", folder / f"talk{index}.wav")
    assert leftovers(out) == []
    pids = {json.loads(p.read_text())["worker_pid"] for p in (out / ".sonic-batch" / "jobs").glob("*.json")}
    assert len(pids) == 2  # the actor's process ended once and Ray started another
    assert ray.__version__
