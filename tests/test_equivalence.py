"""Optimised execution paths give the plain path's numbers (within the golden tolerances).

Already covered elsewhere (not repeated here): SDPA vs explicit softmax in every attention and the
broadcast (not per-pixel materialised) temporal context and mask (tests/test_unet.py), batched vs
per-pair and streamed vs whole-tensor RIFE (tests/test_rife.py), chunked decode vs the official
chunking (tests/test_vae.py; one-shot decode differs by design: the temporal decoder mixes frames
within a call), Whisper SDPA vs eager (tests/test_audio_features.py). Added here: the SDPA backends
the benchmark can select, the whole UNet under torch.compile's graph capture, and the streamed
decode -> RIFE chain the benchmark and `SonicPipeline.stream` use.
"""

from __future__ import annotations


import pytest
import torch
from helpers import FACE, SR, assert_close_peak, assert_close_to_golden, load_golden, speech_like

from sonic.tools.bench import attention_backend



@pytest.fixture(scope="module")
def unet(golden_unet):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: per-op overhead dominates; 1 thread is fastest on shared runners
    yield golden_unet
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def window():
    inputs = load_golden("unet_forward", "sampling_inputs.safetensors")
    args = (inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states_clip"],
            inputs["encoder_hidden_states_audio"], inputs["added_time_ids"], inputs["face_mask"])
    return args, load_golden("unet_forward", "sampling_outputs.safetensors")["noise_pred"]


@pytest.mark.parametrize("backend", ["auto", "math", "flash"])
def test_every_cpu_attention_backend_matches_the_official_window(unet, window, backend):
    args, expected = window
    with torch.no_grad(), attention_backend(backend, torch.device("cpu")):
        out = unet(*args)
    assert_close_to_golden(out, expected, f"unet_forward/noise_pred with SDPA backend {backend}")


def test_attention_backend_really_restricts_sdpa(unet, window):
    """The selection is real: the memory-efficient kernel does not exist on the CPU, so forcing it fails."""
    args, _ = window
    with torch.no_grad(), attention_backend("efficient", torch.device("cpu")), pytest.raises(RuntimeError):
        unet(*args)


def test_whole_unet_is_captured_in_one_graph_with_identical_output(unet, window):
    """`--compile` needs the UNet forward free of graph breaks and host synchronisation: dynamo must
    capture it whole (fullgraph) and the captured graph must compute exactly the eager numbers."""
    args, expected = window
    torch._dynamo.reset()
    compiled = torch.compile(unet, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        eager = unet(*args)
        captured = compiled(*args)
    assert torch.equal(captured, eager)
    assert_close_to_golden(captured, expected, "unet_forward/captured UNet")
    torch._dynamo.reset()


def test_streamed_decode_into_rife_equals_whole_tensors(tiny_zoo, portrait):
    from sonic.pipeline import SonicPipeline

    pipe = SonicPipeline.from_pretrained(tiny_zoo, device="cpu", dtype="fp32", face_detector=False)
    job = pipe.prepare(portrait, (speech_like(1.5), SR), face_box=FACE, min_resolution=64)
    latents = pipe.sample(pipe.encode(job), inference_steps=1, seed=2)
    whole = pipe.interpolate(pipe.decode(latents, decode_chunk_size=8))
    chunks = list(pipe.interpolate_iter(pipe.decode_iter(latents, decode_chunk_size=8),
                                        total=latents.shape[1]))
    assert len(chunks) > 2  # really streamed: 18 frames in chunks of 8 pairs
    streamed = torch.cat(chunks)
    assert streamed.shape == whole.shape == (2 * latents.shape[1], 64, 64, 3)
    assert_close_peak(streamed, whole, 1e-5, "streamed decode -> RIFE")
