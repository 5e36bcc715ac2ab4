"""Strict key/shape checking of state dicts, with a diagnosis when the wrong file was used.

Every checkpoint is loaded strictly (as the official code does): a missing, extra or
reshaped key is an error. The error lists counts and the first few keys of each kind, names
the file and the model it should have been, and runs "hint" functions that recognise common
mix-ups (the stock SVD UNet instead of Sonic's `unet.pth`, `audio2bucket.pth` saved as
`audio2token.pth`, ...).

A hint is any callable `hint(found_shapes) -> str | None`, where `found_shapes` maps every
key of the file to its shape (a tuple of ints).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
import torch

from ..errors import WeightsError

Hint = Callable[[Mapping[str, tuple]], "str | None"]
_SHOW = 8  # keys listed per kind of mismatch

# Roles (the `what` of the messages) and the names of the released files.
RELEASE_NAMES = {
    "unet": "Sonic's unet.pth",
    "audio2token": "Sonic's audio2token.pth",
    "audio2bucket": "Sonic's audio2bucket.pth",
    "rife": "RIFE's flownet.pkl",
    "whisper": "a Whisper checkpoint (whisper-tiny model.safetensors)",
    "vae": "the SVD-xt VAE (vae/diffusion_pytorch_model.safetensors)",
    "image_encoder": "a CLIP image encoder (image_encoder/model.safetensors)",
    "svd_single_file": "an original-layout SVD checkpoint such as svd_xt.safetensors (keys model.diffusion_model.*)",
    "stock_svd_unet": "the stock SVD-xt UNet (no Sonic audio adapters: no to_k_ip/to_v_ip keys)",
}


def shapes_of(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple]:
    """`{key: shape tuple}` of a state dict (tensors may be on any device, meta included)."""
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def identify_weights(found: Mapping[str, tuple]) -> str | None:
    """Guess which known model a key->shape mapping belongs to (a `RELEASE_NAMES` role), or None."""
    keys = set(found)
    if any(k.startswith("model.diffusion_model.") for k in keys) or \
            any(k.startswith("first_stage_model.") or k.startswith("conditioner.") for k in keys):
        return "svd_single_file"
    if "conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys):
        return "unet" if any("to_k_ip" in k for k in keys) else "stock_svd_unet"
    if any(k.startswith("encoder.down_blocks.") for k in keys) and any(k.startswith("decoder.") for k in keys):
        return "vae"
    if {"proj1.weight", "proj2.weight", "proj3.weight"} <= keys:
        if "norm.weight" in keys:
            return "audio2token"
        if len(found["proj3.weight"]) == 2 and found["proj3.weight"][0] == 2:
            return "audio2bucket"
    if any(k.replace("module.", "").startswith("block0.") for k in keys) and \
            any("block_tea" in k for k in keys):
        return "rife"
    if any(k.startswith(("encoder.conv1.", "model.encoder.conv1.")) for k in keys):
        return "whisper"
    if any(k.startswith(("vision_model.", "visual_projection.")) for k in keys):
        return "image_encoder"
    return None


def hint_wrong_model(expected_role: str) -> Hint:
    """A hint saying which other known model the file looks like, if any."""
    def hint(found: Mapping[str, tuple]) -> str | None:
        role = identify_weights(found)
        if role is None or role == expected_role:
            return None
        return (f"this file looks like {RELEASE_NAMES[role]}, not {RELEASE_NAMES.get(expected_role, expected_role)}: "
                f"the files were probably swapped or renamed")
    return hint


def hint_stock_svd_unet(found: Mapping[str, tuple]) -> str | None:
    """Sonic's unet.pth expected, but the keys are the stock SVD UNet's (or an SGM-layout file)."""
    role = identify_weights(found)
    if role == "svd_single_file":
        return ("this looks like an original-layout SVD checkpoint (keys start with model.diffusion_model.), "
                "e.g. svd_xt.safetensors, not Sonic's unet.pth; Sonic needs its own fine-tuned UNet from "
                "LeonJoe13/Sonic (Sonic/unet.pth)")
    if role == "stock_svd_unet":
        return ("this looks like the stock SVD UNet (it has no to_k_ip/to_v_ip audio-adapter weights), not "
                "Sonic's unet.pth; download Sonic/unet.pth from LeonJoe13/Sonic")
    return None


def hint_audio2bucket_as_audio2token(found: Mapping[str, tuple]) -> str | None:
    """audio2token expected, but proj3 outputs 2 values and there is no norm: audio2bucket."""
    if identify_weights(found) == "audio2bucket":
        return "this looks like audio2bucket.pth, not audio2token.pth (proj3 has 2 outputs and there is no norm)"
    return None


def hint_audio2token_as_audio2bucket(found: Mapping[str, tuple]) -> str | None:
    """audio2bucket expected, but the file has audio2token's LayerNorm."""
    if identify_weights(found) == "audio2token":
        return "this looks like audio2token.pth, not audio2bucket.pth (it has a norm layer)"
    return None


def hint_rife_prefix(found: Mapping[str, tuple]) -> str | None:
    """RIFE keys are expected after `module.` stripping; point out a prefix problem."""
    if any(k.startswith("module.") for k in found):
        return "the keys still carry the `module.` prefix: pass the dict through rife_state_dict() first"
    return None


#: Default hints per role, for `load_strict(..., hints=HINTS[role])`.
HINTS: dict[str, tuple[Hint, ...]] = {
    "unet": (hint_stock_svd_unet, hint_wrong_model("unet")),
    "audio2token": (hint_audio2bucket_as_audio2token, hint_wrong_model("audio2token")),
    "audio2bucket": (hint_audio2token_as_audio2bucket, hint_wrong_model("audio2bucket")),
    "rife": (hint_rife_prefix, hint_wrong_model("rife")),
    "whisper": (hint_wrong_model("whisper"),),
    "vae": (hint_wrong_model("vae"),),
    "image_encoder": (hint_wrong_model("image_encoder"),),
}


def check_state_dict(state_dict: Mapping[str, torch.Tensor], expected_shapes: Mapping[str, tuple], *,
                     path, what: str, hints: Iterable[Hint] = ()) -> None:
    """Raise one `WeightsError` unless the keys and shapes equal `expected_shapes` exactly."""
    found = shapes_of(state_dict)
    expected = {k: tuple(v) for k, v in expected_shapes.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    conflicts = [k for k in expected if k in found and found[k] != expected[k]]
    if not (missing or unexpected or conflicts):
        return
    lines = [f"{what} file {path} does not match the model: {len(found)} keys in the file, "
             f"{len(expected)} expected."]
    if missing:
        lines.append(f"  {len(missing)} missing: {_listing(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected: {_listing(unexpected)}")
    if conflicts:
        shown = ", ".join(f"{k} {found[k]} (expected {expected[k]})" for k in conflicts[:_SHOW])
        lines.append(f"  {len(conflicts)} with another shape: {shown}{' ...' if len(conflicts) > _SHOW else ''}")
    diagnoses = []
    for hint in hints:
        text = hint(found)
        if text and text not in diagnoses:
            diagnoses.append(text)
    lines += [f"  Diagnosis: {d}" for d in diagnoses]
    lines.append("  Check that this is the right file for this slot, or download it again.")
    raise WeightsError("\n".join(lines))


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOW]) + (" ..." if len(keys) > _SHOW else "")


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, path, what: str,
                hints: Iterable[Hint] = ()) -> torch.nn.Module:
    """Check then load `state_dict` into `module` strictly; returns the module.

    A module built on the meta device gets the file's tensors assigned (`assign=True`), so
    its parameters then have the file's dtype and device: cast afterwards (`module.to(...)`).
    Assigned tensors that are not 64-byte aligned (safetensors data usually is not) are
    copied first: unaligned inputs take another BLAS path on CPU and change the last bits.
    """
    expected = shapes_of(module.state_dict())
    check_state_dict(state_dict, expected, path=path, what=what, hints=hints)
    floating = {k for k, v in module.state_dict().items() if v.is_floating_point()}
    check_tensor_values({k: v for k, v in state_dict.items() if k in floating}, path=path, what=what)
    on_meta = any(t.is_meta for t in module.state_dict().values())
    if on_meta:
        state_dict = {k: v if v.data_ptr() % 64 == 0 else v.clone() for k, v in state_dict.items()}
    module.load_state_dict(dict(state_dict), strict=True, assign=on_meta)
    return module



def check_tensor_values(state_dict: Mapping[str, torch.Tensor], *, path, what: str) -> None:
    """Weights are floating-point numbers, all finite: an int8/bool tensor or a NaN would fail
    deep inside the model (or after the whole sampling) with a message about something else."""
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            raise WeightsError(f"{what} file {path} holds {key} as {str(tensor.dtype).replace('torch.', '')}, "
                               f"not floating-point weights (a quantised or damaged file?); use the released "
                               f"fp32/fp16/bf16 file")
    for key, tensor in state_dict.items():
        if tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(f"{what} file {path} holds NaN or infinite values in {key}; the file is damaged "
                               f"(or a diverged training run): download it again")
