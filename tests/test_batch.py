"""`python -m sonic batch` with the local executor: up-front checks, resume after SIGKILL, worker
crashes and retries, portrait reuse. Real worker processes on the tiny zoo (1 step, 64 px)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from helpers import FACE, speech_like

REPO = Path(__file__).resolve().parents[1]
FAST = ["--face-box", ",".join(str(v) for v in FACE), "--min-resolution", "64", "--steps", "1", "--quiet",
        "--preset", "ultrafast"]


def sonic_env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2", **extra)


def run_batch(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "sonic", "batch", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env or sonic_env(), cwd=REPO)


@pytest.fixture(scope="module")
def media(tmp_path_factory, portrait):
    """Two portraits and five short audios of different lengths."""
    root = tmp_path_factory.mktemp("batch_media")
    Image.fromarray(portrait).save(root / "anna.png")
    Image.fromarray(np.ascontiguousarray(portrait[:, ::-1])).save(root / "ben.png")
    for index, seconds in enumerate((0.3, 0.4, 0.5, 0.6, 0.35)):
        sf.write(root / f"talk{index}.wav", speech_like(seconds, seed=index), 16_000)
    return root


def write_csv(path: Path, rows: list[dict]) -> Path:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(keys)] + [",".join(str(row.get(k, "")) for k in keys) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def manifest_in(media: Path, tmp_path: Path, rows: list[dict], name="jobs.csv") -> Path:
    """A manifest next to copies of the media (paths in it are relative to its folder)."""
    folder = tmp_path / "inputs"
    shutil.copytree(media, folder, dirs_exist_ok=True)
    return write_csv(folder / name, rows)


def report(out: Path) -> dict:
    data = json.loads((out / "batch_report.json").read_text())
    return {e["row"]: e for e in data["jobs"]} | {"summary": data["summary"]}


def leftovers(out: Path) -> list[str]:
    """Anything in OUT besides the outputs, the report, the records and the lock."""
    allowed = {"batch_report.json", ".sonic-batch", ".sonic-batch/lock", ".sonic-batch/jobs", ".sonic-batch/work"}
    found = []
    for path in out.rglob("*"):
        rel = path.relative_to(out).as_posix()
        is_record = rel.startswith(".sonic-batch/jobs/") and path.suffix == ".json" and not path.name.startswith(".")
        is_output = path.parent == out and path.suffix == ".mp4" and not path.name.startswith(".")
        if rel not in allowed and not is_record and not is_output:
            found.append(rel)
    return found


def check_output(path: Path, audio: Path) -> None:
    from sonic.media.probe import probe

    info = probe(path)
    seconds = sf.info(str(audio)).duration
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert abs(info["video_duration"] - seconds) <= 1 / 25 + 1e-6, (path, info["video_duration"], seconds)


# ---------------------------------------------------------------------------------- checks up front
def test_invalid_rows_stop_the_batch_before_any_model_loads(media, tmp_path, tiny_zoo, capsys):
    from sonic.cli import main

    # A weights folder whose UNet is garbage: loading any model would fail with a weights error instead.
    broken = tmp_path / "broken_zoo"
    shutil.copytree(tiny_zoo, broken)
    (broken / "Sonic" / "unet.pth").write_bytes(b"not a checkpoint")
    rows = [{"image": "anna.png", "audio": f"talk{i}.wav", "output": f"clip{i}.mp4"} for i in range(5)]
    rows[2]["audio"] = "nowhere.wav"
    rows[4]["steps"] = "0"
    jobs = manifest_in(media, tmp_path, rows)
    out = tmp_path / "out"
    code = main(["batch", str(jobs), "--out-dir", str(out), "--models", str(broken), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert "jobs.csv line 4: audio" in err and "nowhere.wav not found" in err  # header is line 1
    assert "jobs.csv line 6:" in err and "inference_steps" in err  # every problem at once
    assert "weights" not in err.lower() and "unet" not in err.lower()
    assert not out.exists()  # nothing written

    # A duplicate output and an unknown column are problems of their lines too.
    rows = [{"image": "anna.png", "audio": "talk0.wav", "output": "same.mp4"},
            {"image": "anna.png", "audio": "talk1.wav", "output": "same.mp4", "colour": "red"},
            {"image": "ben.png", "audio": "talk1.wav", "output": "same.mp4"}]
    jobs = manifest_in(media, tmp_path, rows, name="dupes.csv")
    assert main(["batch", str(jobs), "--out-dir", str(out), "--models", str(broken), *FAST]) == 2
    err = capsys.readouterr().err
    assert "line 3: unknown column 'colour'" in err and "line 4: output same.mp4 is also written by line 2" in err
    assert not out.exists()


def test_jsonl_rows_override_the_command_line(media, tmp_path):
    from sonic.batch.manifest import job_defaults, read_manifest
    from sonic.cli import build_parser

    folder = manifest_in(media, tmp_path, []).parent
    jobs = folder / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(r) for r in [
        {"image": "anna.png", "audio": "talk0.wav", "seed": 7, "face_box": [1, 2, 60, 70], "no_interpolate": True},
        {"image": "ben.png", "audio": "talk1.wav", "output": "b.mp4"}, {}]) + "\n\n")
    args = build_parser().parse_args(["batch", str(jobs), "--out-dir", "x", "--seed", "3", "--steps", "2"])
    manifest = read_manifest(jobs, job_defaults(args))
    assert [(p.line, "needs 'image'" in p.message) for p in manifest.problems] == [(3, True), (3, False)]
    first, second = manifest.rows
    assert (first.options["seed"], first.options["face_box"], first.options["no_interpolate"]) == (7, "1,2,60,70", True)
    assert (second.options["seed"], second.options["steps"], second.output) == (3, 2, "b.mp4")
    assert first.output == "anna__talk0.mp4" and first.audio_seconds == pytest.approx(0.3)


def test_longest_audio_first_and_a_worker_keeps_its_portrait(media, tmp_path):
    from sonic.batch.jobs import longest_first, make_jobs
    from sonic.batch.local import pick_job
    from sonic.batch.manifest import job_defaults, read_manifest
    from sonic.cli import build_parser

    rows = [{"image": "anna.png", "audio": "talk0.wav"}, {"image": "ben.png", "audio": "talk3.wav"},
            {"image": "anna.png", "audio": "talk2.wav"}, {"image": "ben.png", "audio": "talk1.wav"}]
    jobs_file = manifest_in(media, tmp_path, rows)
    args = build_parser().parse_args(["batch", str(jobs_file), "--out-dir", "x", *FAST])
    jobs = longest_first(make_jobs(read_manifest(jobs_file, job_defaults(args)).rows))
    assert [j.row.audio_seconds for j in jobs] == pytest.approx([0.6, 0.5, 0.4, 0.3])
    pending = list(jobs)
    first = pick_job(pending, None)  # ben/talk3, the longest
    assert pick_job(pending, first.portrait_key).output == "ben__talk1.mp4"  # same portrait before longer jobs
    assert pick_job(pending, first.portrait_key).output == "anna__talk2.mp4"  # none left: the longest
    # The id follows the inputs' bytes and the settings, not the file names.
    again = make_jobs(read_manifest(jobs_file, job_defaults(args)).rows)
    assert {j.job_id for j in again} == {j.job_id for j in jobs}
    args = build_parser().parse_args(["batch", str(jobs_file), "--out-dir", "x", *FAST, "--seed", "1"])
    assert not {j.job_id for j in make_jobs(read_manifest(jobs_file, job_defaults(args)).rows)} & \
        {j.job_id for j in jobs}


def test_row_options_become_widget_values_of_the_comfyui_preset():
    from sonic.batch.comfyui_executor import workflow_overrides
    from sonic.batch.manifest import job_option_actions
    from sonic.errors import ParameterError

    defaults = {dest: action.default for dest, action in job_option_actions().items()}
    assert workflow_overrides(defaults) == {}  # the preset keeps its own values
    given = dict(defaults, steps=3, face_box="1,2,30,40", no_crop=True, sync="40", crf=23, no_interpolate=True)
    assert workflow_overrides(given) == {"inference_steps": "3", "face": "box", "face_box": "1,2,30,40",
                                         "crop": "false", "lip_sync": "manual", "sync_offset_ms": "40",
                                         "crf": "23", "interpolation": "false"}
    assert workflow_overrides(dict(defaults, face_box="full", sync="auto")) == {"face": "full_image",
                                                                                "lip_sync": "auto"}
    with pytest.raises(ParameterError, match="max_image_pixels"):
        workflow_overrides(dict(defaults, max_image_pixels=10 ** 6))


# ---------------------------------------------------------------------------------- running and resuming
def test_skip_invalid_runs_the_others_and_a_rerun_redoes_only_changed_inputs(media, tmp_path, tiny_zoo):
    rows = [{"image": "anna.png", "audio": f"talk{i}.wav"} for i in range(4)]
    rows.insert(1, {"image": "missing.png", "audio": "talk4.wav"})
    jobs = manifest_in(media, tmp_path, rows)
    out = tmp_path / "out"
    result = run_batch(jobs, "--out-dir", out, "--models", tiny_zoo, "--skip-invalid", *FAST)
    assert result.returncode == 1, result.stderr
    got = report(out)
    assert got[3]["status"] == "invalid" and "missing.png not found" in got[3]["error"]
    done = {n: e for n, e in got.items() if n != "summary" and e["status"] == "done"}
    assert sorted(done) == [2, 4, 5, 6] and got["summary"]["preparations_saved"] == 3
    assert "4 of 5 jobs done" in result.stdout and "1 invalid" in result.stdout
    assert result.stdout.count("done   anna__talk") == 4
    for index in range(4):
        check_output(out / f"anna__talk{index}.mp4", jobs.parent / f"talk{index}.wav")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.mp4")}

    # Rerun: nothing to do (no worker even starts) except the job whose audio changed meanwhile.
    sf.write(jobs.parent / "talk2.wav", speech_like(0.45, seed=9), 16_000)
    again = run_batch(jobs, "--out-dir", out, "--models", tiny_zoo, "--skip-invalid", *FAST)
    assert again.returncode == 1, again.stderr
    assert again.stdout.count("done   ") == 1 and "done   anna__talk2.mp4" in again.stdout
    got = report(out)
    assert [got[n].get("skipped", False) for n in (2, 4, 5, 6)] == [True, True, False, True]
    for name, (mtime, data) in before.items():
        if name != "anna__talk2.mp4":
            assert (out / name).stat().st_mtime_ns == mtime and (out / name).read_bytes() == data
    check_output(out / "anna__talk2.mp4", jobs.parent / "talk2.wav")
    assert leftovers(out) == []


def test_sigkill_of_the_whole_batch_then_rerun_finishes_every_job_once(media, tmp_path, tiny_zoo):
    rows = [{"image": "anna.png" if i % 2 else "ben.png", "audio": f"talk{i}.wav", "output": f"c{i}.mp4"}
            for i in range(4)]
    jobs = manifest_in(media, tmp_path, rows)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "sonic", "batch", str(jobs), "--out-dir", str(out), "--models", str(tiny_zoo), *FAST]
    process = subprocess.Popen(args, env=sonic_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("c*.mp4")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        first = list(out.glob("c*.mp4"))
        assert len(first) == 1, "no output appeared" if not first else "the batch finished before the kill"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    first = first[0]
    mtime, data = first.stat().st_mtime_ns, first.read_bytes()

    result = run_batch(jobs, "--out-dir", out, "--models", tiny_zoo, *FAST)
    assert result.returncode == 0, result.stderr
    got = report(out)
    assert all(got[n]["status"] == "done" for n in range(2, 6))
    assert sum(bool(got[n].get("skipped")) for n in range(2, 6)) >= 1
    assert sorted(p.name for p in out.glob("*.mp4")) == [f"c{i}.mp4" for i in range(4)]
    for i in range(4):
        check_output(out / f"c{i}.mp4", jobs.parent / f"talk{i}.wav")
    assert first.stat().st_mtime_ns == mtime and first.read_bytes() == data
    assert f"done   {first.name}" not in result.stdout
    assert leftovers(out) == []


def test_a_crashed_worker_is_restarted_and_a_failing_job_ends_failed(media, tmp_path, tiny_zoo):
    # Longest first: j0 (0.6 s), then j2 (fails on every attempt), then j1 (its worker dies once).
    rows = [{"image": "anna.png", "audio": f"talk{i}.wav", "output": f"j{n}.mp4"} for n, i in enumerate((3, 1, 2))]
    jobs = manifest_in(media, tmp_path, rows)
    out = tmp_path / "out"
    env = sonic_env(SONIC_BATCH_TEST_CRASH="j1.mp4", SONIC_BATCH_TEST_FAIL="j2.mp4")
    result = run_batch(jobs, "--out-dir", out, "--models", tiny_zoo, "--retries", "1", *FAST, env=env)
    assert result.returncode == 1, result.stderr
    got = report(out)
    assert (got[3]["status"], got[3]["attempts"]) == ("done", 2)  # crashed once (os._exit), retried
    assert (got[2]["status"], got[2]["attempts"]) == ("done", 1)
    assert (got[4]["status"], got[4]["attempts"]) == ("failed", 2)
    assert "test hook SONIC_BATCH_TEST_FAIL" in got[4]["error"]
    record = json.loads(next((out / ".sonic-batch" / "jobs").glob(f"{got[4]['job_id']}.json")).read_text())
    assert record["status"] == "failed" and "SONIC_BATCH_TEST_FAIL" in record["error"]
    assert sorted(p.name for p in out.glob("*.mp4")) == ["j0.mp4", "j1.mp4"]
    check_output(out / "j1.mp4", jobs.parent / "talk1.wav")
    records = {p: json.loads((out / ".sonic-batch" / "jobs" / f"{got[p]['job_id']}.json").read_text()) for p in (2, 3)}
    assert records[2]["worker_pid"] != records[3]["worker_pid"]  # j1 finished in a restarted worker
    assert "FAILED j2.mp4 (row 4) after 2 attempt(s)" in result.stdout
    assert leftovers(out) == []


# ---------------------------------------------------------------------------------- portrait reuse
def test_jobs_sharing_a_portrait_run_clip_and_the_vae_encoder_once(media, tmp_path, tiny_zoo, torch_threads):
    from sonic.batch.jobs import RecordStore, make_jobs
    from sonic.batch.manifest import job_defaults, read_manifest
    from sonic.batch.runner import JobRunner, load_pipeline
    from sonic.cli import build_parser

    rows = [{"image": "anna.png", "audio": f"talk{i}.wav"} for i in range(3)] + \
           [{"image": "ben.png", "audio": "talk0.wav"}, {"image": "anna.png", "audio": "talk3.wav", "seed": 4}]
    jobs_file = manifest_in(media, tmp_path, rows)
    out = tmp_path / "out"
    args = build_parser().parse_args(["batch", str(jobs_file), "--out-dir", str(out), *FAST])
    jobs = make_jobs(read_manifest(jobs_file, job_defaults(args)).rows)
    RecordStore(out / ".sonic-batch").open().close()
    pipe = load_pipeline({"models": str(tiny_zoo), "device": "cpu", "dtype": "fp32"})
    calls = {"clip": 0, "vae_encoder": 0}
    pipe.models.image_encoder.register_forward_hook(lambda *a: calls.__setitem__("clip", calls["clip"] + 1))
    pipe.models.vae.encoder.register_forward_hook(
        lambda *a: calls.__setitem__("vae_encoder", calls["vae_encoder"] + 1))
    runner = JobRunner(pipe)
    results = [runner.run(job.spec(out)) for job in jobs]
    assert calls == {"clip": 2, "vae_encoder": 2}
    assert [r["reused"] for r in results] == [False, True, True, False, True]
    assert runner.cache.saved == 3

    # A reused preparation gives the same video as a fresh one.
    fresh = jobs[2].spec(tmp_path)
    (tmp_path / ".sonic-batch" / "jobs").mkdir(parents=True)
    (tmp_path / ".sonic-batch" / "work").mkdir()
    JobRunner(pipe).run(fresh)
    assert Path(fresh["output"]).read_bytes() == (out / jobs[2].output).read_bytes()
