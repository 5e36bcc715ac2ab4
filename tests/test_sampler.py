"""The windowed 3-branch guided sampler against a naive transcription of SPEC 6.3-6.5.

The stand-in UNet is a small real torch network (conv over the 8 input channels, CLIP/audio/
added-time-id/timestep conditioning, a face-mask weighting, a frame-position embedding and
mixing across the window's frames) so that a wrong gather, a wrong branch layout or a wrong
window layout changes its output.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as nnf
from conftest import GOLDEN, assert_close_peak, load_golden

from sonic.config import SonicConfig
from sonic.errors import Interrupted, ParameterError
from sonic.diffusion.sampler import SamplerProgress, initial_noise, sample_latents
from sonic.diffusion.schedule import Schedule, make_schedule

C, H, W, DC, T = 4, 3, 5, 6, 3  # latent channels, latent height/width, context width, audio tokens


class StandInUNet(torch.nn.Module):
    """Deterministic v-predictor with the Sonic UNet call convention; records (B, F) of every call."""

    def __init__(self, frames: int = 25):
        super().__init__()
        self.conv = torch.nn.Conv2d(2 * C, C, 3, padding=1)
        self.clip = torch.nn.Linear(DC, C)
        self.audio = torch.nn.Linear(T * DC, C)
        self.ids = torch.nn.Linear(3, C)
        self.time = torch.nn.Linear(1, C)
        self.pos = torch.nn.Parameter(torch.zeros(frames, C))
        generator = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        self.calls: list[tuple[int, int]] = []

    def forward(self, sample, timestep, clip_context, audio_context, added_time_ids, face_mask, audio_scale=1.0):
        batch, frames, _, h, w = sample.shape
        self.calls.append((batch, frames))
        x = self.conv(sample.flatten(0, 1))
        cond = self.clip(clip_context[:, 0]) + self.audio(audio_context.flatten(1))
        mask = nnf.interpolate(face_mask, size=(h, w), mode="bilinear", align_corners=False)
        x = x + cond[:, :, None, None] * mask
        emb = self.ids(added_time_ids / 50) + self.time(timestep.reshape(1, 1))
        x = x.view(batch, frames, C, h, w) + emb[:, None, :, None, None] + self.pos[:frames, :, None, None]
        x = x + 0.5 * x.mean(dim=1, keepdim=True)  # temporal mixing inside the window
        return torch.tanh(x)


def make_inputs(num_frames: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, 1, 8 * H, 8 * W)
    mask[..., 4:20, 8:30] = 1.0
    return dict(
        ref_latent=torch.randn(1, C, H, W, generator=g),
        image_latent=torch.randn(1, C, H, W, generator=g),
        clip_embeds=torch.randn(1, DC, generator=g),
        audio_tokens=torch.randn(num_frames, T, DC, generator=g),
        null_tokens=torch.randn(T, DC, generator=g),
        buckets=16 + 8 * torch.rand(num_frames, 2, generator=g),
        face_mask=mask,
        noise=torch.randn(1, num_frames, C, H, W, generator=g),
    )


def naive_sample(unet, inp: dict, steps: int, strength: float, cfg: SonicConfig) -> torch.Tensor:
    """SPEC 6.1-6.5 written out: per-branch calls, per-frame loops, acc/cnt, shift per step."""
    n_full = steps
    smax, smin, rho = 700.0, 0.002, 7.0
    ramp = [j / (n_full - 1) if n_full > 1 else 0.0 for j in range(n_full)]
    full = [(smax ** (1 / rho) + r * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for r in ramp] + [0.0]
    kept = min(int(n_full * strength), n_full)
    sig = torch.tensor(full[n_full - kept:], dtype=torch.float32)
    ts = [0.25 * torch.log(s) for s in sig[:-1]]
    g1 = torch.linspace(cfg.min_appearance_guidance, cfg.max_appearance_guidance, kept)
    g2 = cfg.audio_guidance
    F, step_len = cfg.frames_per_window, cfg.frames_per_window - cfg.window_overlap

    X = inp["ref_latent"].unsqueeze(1) + inp["noise"] * sig[0]  # (1,N,C,h,w)
    N = X.shape[1]
    zeros_lat, img = torch.zeros(C, H, W), inp["image_latent"][0]
    zeros_clip, e = torch.zeros(1, DC), inp["clip_embeds"]
    shift = 0
    for i in range(kept):
        s_i, s_next = sig[i], sig[i + 1]
        acc = torch.zeros_like(X)
        cnt = torch.zeros(1, N, 1, 1, 1)
        for s0 in range(0, N, step_len):
            s = s0 - shift
            idx = [(s + k) % N for k in range(F)]
            x_win = torch.stack([X[0, p] for p in idx])  # (F,C,h,w)
            x_in = x_win / (s_i ** 2 + 1) ** 0.5
            b = torch.stack([inp["buckets"][p] for p in idx]).mean(0)
            ids = torch.tensor([[cfg.fps, b[0].item(), b[1].item()]])
            outs = []
            for branch in range(3):
                lat = zeros_lat if branch == 0 else img
                clip = zeros_clip if branch == 0 else e
                sample = torch.stack([torch.cat([x_in[k], lat]) for k in range(F)]).unsqueeze(0)
                clip_ctx = torch.stack([clip for _ in idx])
                audio_ctx = torch.stack([inp["null_tokens"] if branch < 2 else inp["audio_tokens"][p] for p in idx])
                outs.append(unet(sample, ts[i], clip_ctx, audio_ctx, ids, inp["face_mask"])[0])
            v = outs[0] + g1[i] * (outs[1] - outs[0]) + g2 * (outs[2] - outs[1])
            x0 = v * (-s_i / (s_i ** 2 + 1) ** 0.5) + x_win / (s_i ** 2 + 1)
            x_new = x_win + (x_win - x0) / s_i * (s_next - s_i)
            for k, p in enumerate(idx):
                acc[:, p] += x_new[k]
                cnt[:, p] += 1
        X = acc / cnt
        shift += cfg.shift_offset
    return X


def run_sampler(unet, inp, steps, strength, cfg, callback=None):
    return sample_latents(unet, schedule=make_schedule(None, steps, strength), config=cfg, callback=callback, **inp)


CFG = SonicConfig(min_appearance_guidance=1.5, max_appearance_guidance=3.0, audio_guidance=4.0)


@pytest.mark.parametrize("num_frames", [1, 7, 25, 26, 63])
@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_matches_naive_reference(num_frames, strength):
    torch.manual_seed(0)
    unet = StandInUNet()
    inp = make_inputs(num_frames)
    with torch.no_grad():
        expected = naive_sample(unet, inp, 3, strength, CFG)
    unet.calls.clear()
    got = run_sampler(unet, inp, 3, strength, CFG)
    assert got.dtype == torch.float32 and got.shape == (1, num_frames, C, H, W)
    assert_close_peak(got, expected, 1e-5, f"N={num_frames} strength={strength}")
    run_steps = make_schedule(None, 3, strength).num_steps
    windows = -(-num_frames // 25)
    assert unet.calls == [(3, 25)] * (run_steps * windows), "one batched 3-branch call per window per step"


@pytest.mark.parametrize("num_frames", [6, 26])
def test_matches_naive_reference_with_other_window_settings(num_frames):
    cfg = CFG.replace(frames_per_window=10, window_overlap=3, shift_offset=4)
    unet = StandInUNet()
    inp = make_inputs(num_frames, seed=3)
    with torch.no_grad():
        expected = naive_sample(unet, inp, 3, 1.0, cfg)
    unet.calls.clear()
    got = run_sampler(unet, inp, 3, 1.0, cfg)
    assert_close_peak(got, expected, 1e-5, f"N={num_frames} F=10 overlap=3 shift=4")
    assert unet.calls == [(3, 10)] * (3 * len(range(0, num_frames, 7)))


@pytest.mark.parametrize("change", ["shift_offset", "buckets", "audio_order", "null_tokens"])
def test_comparison_detects_wrong_layout_or_gathering(change):
    """The parity check is sensitive: each deliberate mistake moves the result far beyond 1e-5."""
    unet = StandInUNet()
    inp = make_inputs(26)
    with torch.no_grad():
        expected = naive_sample(unet, inp, 3, 1.0, CFG)
    cfg, wrong = CFG, dict(inp)
    if change == "shift_offset":
        cfg = CFG.replace(shift_offset=0)
    elif change == "buckets":
        wrong["buckets"] = inp["buckets"].flip(0)
    elif change == "audio_order":
        wrong["audio_tokens"] = inp["audio_tokens"].flip(0)
    else:
        wrong["null_tokens"] = torch.zeros_like(inp["null_tokens"])
    got = run_sampler(unet, wrong, 3, 1.0, cfg)
    peak = expected.abs().max()
    assert (got - expected).abs().max() > 1e-3 * peak


def test_deterministic_and_callback_reports_every_call():
    unet = StandInUNet()
    inp = make_inputs(26)
    seen: list[SamplerProgress] = []
    first = run_sampler(unet, inp, 3, 1.0, CFG, callback=seen.append)
    second = run_sampler(unet, inp, 3, 1.0, CFG)
    assert torch.equal(first, second)
    expected = [SamplerProgress(step=s, num_steps=3, window=w, num_windows=2, call=2 * s + w + 1, total_calls=6)
                for s in range(3) for w in range(2)]
    assert seen == expected


def test_callback_exception_stops_sampling():
    unet = StandInUNet()

    def cancel(info):
        if info.call == 2:
            raise Interrupted("cancelled by the user")

    with pytest.raises(Interrupted):
        run_sampler(unet, make_inputs(63), 3, 1.0, CFG, callback=cancel)
    assert len(unet.calls) == 2


def test_initial_noise_seeding():
    a = initial_noise(0, (1, 3, 4, 2, 2))
    assert a.dtype == torch.float32 and a.device.type == "cpu" and a.shape == (1, 3, 4, 2, 2)
    assert torch.equal(a, initial_noise(0, (1, 3, 4, 2, 2)))
    assert not torch.equal(a, initial_noise(1, (1, 3, 4, 2, 2)))
    assert torch.equal(initial_noise(72589, (5,)), torch.randn(5, generator=torch.Generator().manual_seed(72589)))
    for bad in (-1, 2**63, 1.5, "7"):
        with pytest.raises(ParameterError, match="seed"):
            initial_noise(bad, (2,))


@pytest.mark.parametrize("field, value, words", [
    ("audio_tokens", torch.zeros(0, T, DC), "no frames"),
    ("noise", torch.zeros(1, 6, C, H, W), "noise must be"),
    ("buckets", torch.zeros(7, 3), "buckets"),
    ("null_tokens", torch.zeros(T + 1, DC), "null_tokens"),
    ("image_latent", torch.zeros(1, C, H + 1, W), "image_latent"),
    ("clip_embeds", torch.zeros(DC), "clip_embeds"),
])
def test_bad_inputs_raise_before_any_unet_call(field, value, words):
    unet = StandInUNet()
    inp = make_inputs(7)
    inp[field] = value
    with pytest.raises(ParameterError, match=words):
        run_sampler(unet, inp, 3, 1.0, CFG)
    assert unet.calls == []


# ------------------------------------------------------------------ golden tiny Sonic UNet
UNET_DIR = GOLDEN / "unet_forward"


@pytest.fixture(scope="module")
def golden_unet():
    from sonic.models.unet import build_sonic_unet

    config = json.loads((UNET_DIR / "config.json").read_text())
    unet = build_sonic_unet(config["unet_config"])
    index = json.loads((UNET_DIR / "weights.safetensors.index.json").read_text())
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_golden("unet_forward", shard))
    unet.load_state_dict(state, strict=True)
    return unet.eval()


def test_one_window_reproduces_the_official_unet_call(golden_unet):
    """N=25, first step at sigma_10 of the 25-step table: the sampler's one call equals golden sampling_*."""
    inp = load_golden("unet_forward", "sampling_inputs.safetensors")
    out = load_golden("unet_forward", "sampling_outputs.safetensors")["noise_pred"]
    full = make_schedule(None, 25, 1.0)
    schedule = Schedule(full.sigmas[10:12].clone(), full.timesteps[10:11].clone())  # one step sigma_10 -> sigma_11
    sigma = full.sigmas[10]
    assert torch.equal(full.timesteps[10], inp["timestep"])
    window_latents = inp["window_latents"]
    ids = inp["added_time_ids"][0]
    recorded = []

    def recording_unet(*args, **kwargs):
        assert kwargs == {"audio_scale": 1.0}
        v = golden_unet(*args, **kwargs)
        recorded.append((args, v))
        return v

    cfg = SonicConfig()
    latents = sample_latents(
        recording_unet, ref_latent=torch.zeros(1, 4, 8, 12), image_latent=inp["image_latent"],
        clip_embeds=inp["clip_embedding"], audio_tokens=inp["cond_audio_tokens"],
        null_tokens=inp["null_audio_tokens"], buckets=ids[1:].expand(25, 2).clone(), face_mask=inp["face_mask"],
        schedule=schedule, noise=window_latents / sigma, config=cfg)
    assert len(recorded) == 1
    (sample, timestep, clip_ctx, audio_ctx, time_ids, mask), v = recorded[0]
    assert_close_peak(sample, inp["sample"], 1e-6, "sample")
    assert torch.equal(timestep, inp["timestep"])
    assert torch.equal(clip_ctx, inp["encoder_hidden_states_clip"])
    assert torch.equal(audio_ctx, inp["encoder_hidden_states_audio"])
    assert torch.equal(time_ids, inp["added_time_ids"])
    assert torch.equal(mask, inp["face_mask"])
    assert_close_peak(v, out, 1e-4, "noise_pred")
    # guidance 2.0 / 7.5 and the Euler step sigma_10 -> sigma_11 from the official v
    guided = out[0] + 2.0 * (out[1] - out[0]) + 7.5 * (out[2] - out[1])
    x0 = guided * (-sigma / (sigma ** 2 + 1) ** 0.5) + window_latents[0] / (sigma ** 2 + 1)
    expected = window_latents[0] + (window_latents[0] - x0) / sigma * (full.sigmas[11] - sigma)
    assert_close_peak(latents[0], expected, 1e-4, "stepped latents")
