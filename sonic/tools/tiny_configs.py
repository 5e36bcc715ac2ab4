"""The sizes of the tiny models, derived from the released configurations.

The tiny zoo and the golden fixtures (tests/fixtures/golden) use the same tiny networks: the
released ones (the SVD-xt configs shipped in `sonic/assets/svd_xt/`, whisper-tiny and the
adapter/RIFE widths of `sonic.tools.random_models`) with fewer levels, layers and channels.
Each function below shrinks one released config; only the shrunken numbers are written here,
everything else is read from the released value. tests/test_tiny_configs.py checks that the
results equal the configs recorded with the golden fixtures, so the two cannot drift.
"""

from __future__ import annotations

from ..config import BUCKET_WINDOW, SAMPLE_RATE, TOKEN_WINDOW, TOKEN_WINDOW_LAYERS, WHISPER_CHUNK_SAMPLES
from .random_models import RIFE_TEACHER_IN, WHISPER_TINY_ENCODER, svd_config

CONTEXT_DIM = 12  # CLIP embedding = audio-token = UNet cross-attention width (real 1024)
UNET_WIDTHS = (32, 64)  # two levels: SVD-xt's first (cross-attention) and last (plain) of four
UNET_HEAD_DIM = 16  # channels per attention head (real 64)
UNET_TIME_EMBED_DIM = 8  # per added time id (real 256)
UNET_SAMPLE_SIZE = 8
VAE_WIDTH = 32  # every VAE level; GroupNorm's 32 groups make it the minimum
VAE_SAMPLE_SIZE = 64
WHISPER_WIDTH = 8  # d_model (real 384)
WHISPER_HEADS = 2
ADAPTER_WIDTH = 16  # intermediate width of both audio adapters (real 1024)
AUDIO_TOKENS = 4  # audio tokens per frame (real 32)
RIFE_WIDTH = 16  # IFBlock channels (real 90)
CLIP_WIDTH = 16  # hidden size of the CLIP vision tower (real 1280)
CLIP_HEADS = 2
# The tiny Whisper's decoder: present in the file as in the release, never run by Sonic.
WHISPER_DECODER = dict(vocab_size=64, decoder_layers=1, decoder_attention_heads=WHISPER_HEADS,
                       decoder_ffn_dim=2 * WHISPER_WIDTH, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                       eos_token_id=2, decoder_start_token_id=3, suppress_tokens=None, begin_suppress_tokens=None,
                       activation_function="gelu", scale_embedding=False)


def _public(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _keep_first_and_last(values: list) -> list:
    return [values[0], values[-1]]


def unet_config() -> dict:
    """The tiny UNetSpatioTemporalConditionModel config (without `_class_name`)."""
    real = _public(svd_config("unet"))
    time_ids = real["projection_class_embeddings_input_dim"] // real["addition_time_embed_dim"]  # fps, motion, expression
    return {**real,
            "sample_size": UNET_SAMPLE_SIZE,
            "down_block_types": _keep_first_and_last(real["down_block_types"]),
            "up_block_types": _keep_first_and_last(real["up_block_types"]),
            "block_out_channels": list(UNET_WIDTHS),
            "addition_time_embed_dim": UNET_TIME_EMBED_DIM,
            "projection_class_embeddings_input_dim": time_ids * UNET_TIME_EMBED_DIM,
            "layers_per_block": 1,
            "cross_attention_dim": CONTEXT_DIM,
            "num_attention_heads": [width // UNET_HEAD_DIM for width in UNET_WIDTHS]}


def vae_config() -> dict:
    """The tiny AutoencoderKLTemporalDecoder config: all four levels (spatial factor 8), narrow."""
    real = _public(svd_config("vae"))
    return {**real, "block_out_channels": [VAE_WIDTH] * len(real["block_out_channels"]), "layers_per_block": 1,
            "sample_size": VAE_SAMPLE_SIZE}


def clip_config() -> dict:
    """The tiny CLIPVisionConfig values (image size and patch as released, so preprocessing is real)."""
    real = _public(svd_config("image_encoder"))
    return dict(hidden_size=CLIP_WIDTH, intermediate_size=2 * CLIP_WIDTH, num_hidden_layers=1,
                num_attention_heads=CLIP_HEADS, patch_size=real["patch_size"], image_size=real["image_size"],
                projection_dim=CONTEXT_DIM, num_channels=real["num_channels"])


def whisper_config() -> dict:
    """The tiny WhisperConfig values: whisper-tiny's encoder depth (TOKEN_WINDOW_LAYERS hidden states), narrow."""
    real = WHISPER_TINY_ENCODER  # its 4 layers + the embeddings give the TOKEN_WINDOW_LAYERS hidden states
    return {"num_mel_bins": real["num_mel_bins"], "d_model": WHISPER_WIDTH, "encoder_layers": real["encoder_layers"],
            "encoder_attention_heads": WHISPER_HEADS, "encoder_ffn_dim": 2 * WHISPER_WIDTH,
            "max_source_positions": real["max_source_positions"], **WHISPER_DECODER}


def whisper_feature_extractor() -> dict:
    """WhisperFeatureExtractor arguments of whisper-tiny (what `sonic.inputs.audio` computes)."""
    from ..inputs.audio import HOP_LENGTH, N_FFT, N_MELS

    return dict(feature_size=N_MELS, sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH,
                chunk_length=WHISPER_CHUNK_SAMPLES // SAMPLE_RATE, n_fft=N_FFT, padding_value=0.0,
                return_attention_mask=False)


def audio2token_kwargs() -> dict:
    """Constructor arguments of the tiny `AudioToTokens`."""
    return dict(seq_len=TOKEN_WINDOW, blocks=TOKEN_WINDOW_LAYERS, channels=WHISPER_WIDTH,
                intermediate_dim=ADAPTER_WIDTH, output_dim=CONTEXT_DIM, context_tokens=AUDIO_TOKENS)


def audio2bucket_kwargs() -> dict:
    """Constructor arguments of the tiny `AudioToBucket` (window, outputs and buckets as released)."""
    from ..models.audio_adapters import BUCKET_CHANNELS, BUCKET_LAYERS, BUCKET_OUTPUT_DIM

    return dict(seq_len=BUCKET_WINDOW, blocks=BUCKET_LAYERS, channels=WHISPER_WIDTH, clip_channels=CONTEXT_DIM,
                intermediate_dim=ADAPTER_WIDTH, output_dim=BUCKET_OUTPUT_DIM, context_tokens=BUCKET_CHANNELS)


def rife_arguments() -> tuple[int, int]:
    """(width, teacher input channels) of the tiny `IFNet`."""
    return RIFE_WIDTH, RIFE_TEACHER_IN
