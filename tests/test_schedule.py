"""Karras schedule and Euler v-prediction arithmetic against the official scheduler (golden/scheduler)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import GOLDEN, SVD_CONFIGS, assert_close_to_golden, load_golden

from sonic.config import SonicConfig
from sonic.errors import ParameterError
from sonic.diffusion.schedule import (KarrasSchedule, add_noise, euler_step, make_schedule, scale_model_input,
                            v_to_denoised)

CASES = json.loads((GOLDEN / "scheduler" / "schedules.json").read_text())["cases"]
SVD_SCHEDULER = json.loads((SVD_CONFIGS / "scheduler" / "scheduler_config.json").read_text())


@pytest.fixture(scope="module")
def golden():
    return load_golden("scheduler", "schedules.safetensors")


def test_reads_the_svd_config():
    assert KarrasSchedule.from_config(SVD_SCHEDULER) == KarrasSchedule(0.002, 700.0, 7.0)
    assert KarrasSchedule.from_config({"sigma_min": 0.01}) == KarrasSchedule(0.01, 700.0, 7.0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_full_tables(name, golden):
    steps = CASES[name]["num_inference_steps"]
    sigmas = KarrasSchedule.from_config(SVD_SCHEDULER).sigmas(steps)
    assert sigmas.dtype == torch.float32 and sigmas[-1] == 0
    assert_close_to_golden(sigmas, golden[f"{name}__sigmas"], f"scheduler/sigmas {name}")
    timesteps = make_schedule(SVD_SCHEDULER, steps, 1.0).timesteps
    assert_close_to_golden(timesteps, golden[f"{name}__timesteps"], f"scheduler/timesteps {name}")


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if CASES[n]["num_steps_run"] > 0])
def test_strength_keeps_the_official_tail(name, golden):
    case = CASES[name]
    schedule = make_schedule(SVD_SCHEDULER, case["num_inference_steps"], case["i2i_noise_strength"])
    start = case["t_start"]
    assert schedule.num_steps == case["num_steps_run"]
    assert_close_to_golden(schedule.sigmas, golden[f"{name}__sigmas"][start:], f"scheduler/sigmas {name}")
    assert_close_to_golden(schedule.timesteps, golden[f"{name}__timesteps"][start:], f"scheduler/timesteps {name}")
    # the same values as printed into schedules.json (float64 there: compared as float32 values)
    rows = case["per_step"]
    assert_close_to_golden(schedule.sigma_start, torch.tensor(case["sigma_start_for_add_noise"]),
                           f"scheduler/sigmas {name} start")
    assert_close_to_golden(schedule.sigmas[:-1], torch.tensor([row["sigma"] for row in rows]), f"scheduler/sigmas {name}")
    assert_close_to_golden(schedule.sigmas[1:], torch.tensor([row["sigma_next"] for row in rows]),
                           f"scheduler/sigmas {name} next")
    assert_close_to_golden(schedule.timesteps, torch.tensor([row["timestep_c_noise"] for row in rows]),
                           f"scheduler/timesteps {name}")


def test_zero_kept_steps_is_a_clear_parameter_error():
    assert CASES["n1_s0.7"]["num_steps_run"] == 0
    with pytest.raises(ParameterError, match="0 denoising steps"):
        make_schedule(SVD_SCHEDULER, 1, 0.7)
    assert SonicConfig(inference_steps=4, i2i_noise_strength=0.7).run_steps == make_schedule(None, 4, 0.7).num_steps


@pytest.mark.parametrize("steps, strength", [(0, 1.0), (25, 0.0), (25, 1.5), (2.5, 1.0)])
def test_bad_steps_or_strength(steps, strength):
    with pytest.raises(ParameterError):
        make_schedule(SVD_SCHEDULER, steps, strength)


def test_bad_scheduler_configs():
    with pytest.raises(ParameterError, match="v_prediction"):
        KarrasSchedule.from_config({"prediction_type": "epsilon"})
    with pytest.raises(ParameterError, match="sigma_min"):
        KarrasSchedule.from_config({"sigma_min": 800.0})


@pytest.mark.parametrize("steps", [4, 25])
def test_step_examples(steps, golden):
    sigmas = golden[f"n{steps}_s1.0__sigmas"]
    prefix = f"example_n{steps}__"
    for i in range(steps):
        x, v = golden[prefix + "sample_in"][i], golden[prefix + "model_output"][i]
        assert_close_to_golden(scale_model_input(x, sigmas[i]), golden[prefix + "scaled_model_input"][i],
                               f"scheduler/scaled_model_input {i}")
        assert_close_to_golden(v_to_denoised(v, x, sigmas[i]), golden[prefix + "pred_original_sample"][i],
                               f"scheduler/pred_original_sample {i}")
        stepped = euler_step(x, v, sigmas[i], sigmas[i + 1])
        assert_close_to_golden(stepped, golden[prefix + "prev_sample"][i], f"scheduler/prev_sample {i}")
        # a float sigma gives the same float32 arithmetic (our code twice, one process: exact)
        assert torch.equal(euler_step(x, v, sigmas[i].item(), sigmas[i + 1].item()), stepped)


@pytest.mark.parametrize("steps", [4, 25])
@pytest.mark.parametrize("strength", ["1.0", "0.7"])
def test_add_noise(steps, strength, golden):
    prefix = f"add_noise_n{steps}_s{strength}__"
    schedule = make_schedule(SVD_SCHEDULER, steps, float(strength))
    got = add_noise(golden[prefix + "ref_latent"], golden[prefix + "noise"], schedule.sigma_start)
    assert_close_to_golden(got, golden[prefix + "latents"], "scheduler/add_noise")


def test_half_precision_inputs_come_back_in_their_dtype():
    x = torch.randn(2, 4, 3, 5).to(torch.bfloat16)
    v = torch.randn(2, 4, 3, 5).to(torch.bfloat16)
    assert scale_model_input(x, 3.0).dtype == torch.bfloat16
    out = euler_step(x, v, 3.0, 1.0)
    assert out.dtype == torch.bfloat16
    ref = euler_step(x.float(), v.float(), 3.0, 1.0)
    assert torch.allclose(out.float(), ref, rtol=1e-2, atol=1e-2)
