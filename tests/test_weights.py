"""Safe reading, strict checking with diagnoses, and verified safetensors conversion (sonic.weights)."""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import GOLDEN, MANIFESTS, load_golden

from sonic.errors import WeightsError
from sonic.weights import (HINTS, check_state_dict, convert_checkpoints, convert_file, find_model_files,
                           identify_weights, load_strict, read_safetensors_metadata,
                           read_state_dict, rife_state_dict, safetensors_digests, shapes_of, state_dict_digests,
                           unsafe_pickle_globals)


class _MarkerOnUnpickle:
    """Unpickling this would create a marker file (stands in for any malicious payload)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ------------------------------------------------------------------------------ reading
def test_pickle_and_safetensors_read_the_same_tensors(tmp_path):
    weights = load_golden("audio2token", "weights.safetensors")
    torch.save(weights, tmp_path / "audio2token.pth")
    torch.save(weights, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    from_zip = read_state_dict(tmp_path / "audio2token.pth", what="audio2token")
    from_legacy = read_state_dict(tmp_path / "legacy.pth", what="audio2token")
    from_st = read_state_dict(GOLDEN / "audio2token" / "weights.safetensors", what="audio2token")
    for loaded in (from_zip, from_legacy, from_st):
        assert set(loaded) == set(weights)
        assert all(torch.equal(loaded[k], weights[k]) for k in weights)


@pytest.mark.parametrize("wrapper", ["state_dict", "module"])
def test_wrapped_state_dict_is_unwrapped(tmp_path, wrapper):
    weights = load_golden("audio2bucket", "weights.safetensors")
    torch.save({wrapper: weights, "epoch": 3}, tmp_path / "w.pth")
    loaded = read_state_dict(tmp_path / "w.pth", what="audio2bucket")
    assert set(loaded) == set(weights)


def test_dict_with_non_tensors_is_not_a_state_dict(tmp_path):
    torch.save({"state_dict": {"a": torch.zeros(2), "step": 5}}, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="not a state dict"):
        read_state_dict(tmp_path / "w.pth", what="audio2token")


@pytest.mark.parametrize("style", ["plain_pickle", "torch_zip"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, style):
    marker = tmp_path / "PAYLOAD_RAN"
    payload = {"proj1.weight": torch.zeros(2), "evil": _MarkerOnUnpickle(marker)}
    path = tmp_path / "audio2token.pth"
    if style == "plain_pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    assert not marker.exists()
    # The payload calls pathlib.Path.touch (by name, or through getattr in torch's pickler).
    assert any(g.startswith("pathlib.Path") for g in unsafe_pickle_globals(path))
    with pytest.raises(WeightsError) as info:
        read_state_dict(path, what="Sonic audio2token")
    assert not marker.exists(), "the pickle payload was executed"
    message = str(info.value)
    assert "refusing" in message and str(path) in message
    assert "pathlib.Path" in message  # names what the file wanted to import
    assert "python -m sonic convert" in message
    # convert_file refuses as well (it reads through the same safe path) and writes nothing.
    with pytest.raises(WeightsError, match="refusing"):
        convert_file(path, what="Sonic audio2token")
    assert not marker.exists()
    assert not path.with_suffix(".safetensors").exists()


def test_trusted_pickle_of_a_module_converts_to_a_safe_twin(tmp_path):
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    path = tmp_path / "flownet.pkl"
    torch.save(layer, path)  # a whole pickled module: needs torch.nn classes
    with pytest.raises(WeightsError, match="torch.nn.modules.linear.Linear"):
        read_state_dict(path, what="RIFE")
    twin = convert_file(path, what="RIFE", trust_pickle=True)
    loaded = read_state_dict(twin, what="RIFE")
    assert torch.equal(loaded["weight"], layer.weight.detach()) and torch.equal(loaded["bias"], layer.bias.detach())


def _damage(tmp_path: Path) -> dict[str, Path]:
    weights = load_golden("audio2token", "weights.safetensors")
    torch.save(weights, tmp_path / "good.pth")
    torch.save(weights, tmp_path / "good_legacy.pth", _use_new_zipfile_serialization=False)
    files = {}
    for name in ("good.pth", "good_legacy.pth"):
        data = (tmp_path / name).read_bytes()
        files[f"truncated {name}"] = tmp_path / f"trunc_{name}"
        files[f"truncated {name}"].write_bytes(data[: len(data) // 2])
    st = (GOLDEN / "audio2token" / "weights.safetensors").read_bytes()
    files["truncated safetensors"] = tmp_path / "trunc.safetensors"
    files["truncated safetensors"].write_bytes(st[: len(st) // 2])
    files["garbage header"] = tmp_path / "garbage.safetensors"
    files["garbage header"].write_bytes(st[:8] + b"{not json" + st[17:])
    files["random bytes .pth"] = tmp_path / "noise.pth"
    files["random bytes .pth"].write_bytes(random.Random(0).randbytes(4096))
    files["empty"] = tmp_path / "empty.pth"
    files["empty"].write_bytes(b"")
    return files


def test_damaged_files_say_damaged_with_size(tmp_path):
    for label, path in _damage(tmp_path).items():
        with pytest.raises(WeightsError) as info:
            read_state_dict(path, what="Sonic audio2token")
        message = str(info.value)
        assert "damaged" in message and str(path) in message, label
        assert f"{path.stat().st_size:,} bytes" in message, label
        assert "download it again" in message, label


def test_random_bytes_never_quote_torchs_unsafe_advice(tmp_path):
    """torch's UnpicklingError text says to re-run with weights_only=False: the message must not repeat it."""
    path = tmp_path / "unet.pth"
    path.write_bytes(random.Random(1).randbytes(5000))
    with pytest.raises(WeightsError) as info:
        read_state_dict(path, what="Sonic unet.pth")
    message = str(info.value)
    assert "not a PyTorch checkpoint" in message and "5,000 bytes" in message and "download it again" in message
    assert "weights_only" not in message and "Re-running" not in message and "\n" not in message


def test_folder_and_missing_paths(tmp_path):
    (tmp_path / "unet.pth").mkdir()
    with pytest.raises(WeightsError, match="is a folder"):
        read_state_dict(tmp_path / "unet.pth", what="Sonic UNet")
    with pytest.raises(WeightsError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth", what="Sonic UNet")


# ------------------------------------------------------------------------------ checking
def test_check_state_dict_lists_counts_and_first_keys(tmp_path):
    expected = {f"layer{i}.weight": (4, 4) for i in range(12)}
    found = {f"layer{i}.weight": torch.zeros(4, 4) for i in range(2, 12)}  # 2 missing
    found["layer5.weight"] = torch.zeros(4, 3)  # 1 reshaped
    found.update({f"extra{i}": torch.zeros(1) for i in range(10)})  # 10 unexpected (only 8 shown)
    with pytest.raises(WeightsError) as info:
        check_state_dict(found, expected, path=tmp_path / "x.pth", what="Sonic UNet")
    message = str(info.value)
    assert str(tmp_path / "x.pth") in message and "Sonic UNet" in message
    assert "2 missing: layer0.weight, layer1.weight" in message
    assert "10 unexpected" in message and "extra7" in message and "extra8" not in message
    assert "1 with another shape: layer5.weight (4, 3) (expected (4, 4))" in message
    check_state_dict({k: torch.zeros(v) for k, v in expected.items()}, expected, path="ok", what="x")  # no error


def test_audio_adapters_swapped_are_diagnosed():
    token, bucket = load_golden("audio2token", "weights.safetensors"), load_golden("audio2bucket", "weights.safetensors")
    with pytest.raises(WeightsError, match="looks like audio2bucket.pth, not audio2token.pth"):
        check_state_dict(bucket, shapes_of(token), path="Sonic/audio2token.pth", what="Sonic audio2token",
                         hints=HINTS["audio2token"])
    with pytest.raises(WeightsError, match="looks like audio2token.pth, not audio2bucket.pth"):
        check_state_dict(token, shapes_of(bucket), path="Sonic/audio2bucket.pth", what="Sonic audio2bucket",
                         hints=HINTS["audio2bucket"])
    # The real full-size key sets (manifests) are recognised the same way.
    import json

    for name in ("audio2token", "audio2bucket", "unet", "svd_unet_stock", "rife_flownet"):
        manifest = {k: tuple(v) for k, v in json.loads((MANIFESTS / f"{name}.json").read_text()).items()
                    if k != "__meta__"}
        role = {"svd_unet_stock": "stock_svd_unet", "rife_flownet": "rife"}.get(name, name)
        assert identify_weights(manifest) == role


def _golden_unet() -> dict[str, torch.Tensor]:
    merged = {}
    for i in range(1, 5):
        merged.update(load_golden("unet_forward", f"weights-0000{i}-of-00004.safetensors"))
    return merged


def test_stock_svd_unet_in_place_of_unet_pth_is_diagnosed():
    sonic_unet = _golden_unet()
    expected = shapes_of(sonic_unet)
    stock = {k: v for k, v in sonic_unet.items() if "to_k_ip" not in k and "to_v_ip" not in k}
    with pytest.raises(WeightsError) as info:
        check_state_dict(stock, expected, path="Sonic/unet.pth", what="Sonic UNet", hints=HINTS["unet"])
    assert "stock SVD UNet" in str(info.value) and "missing" in str(info.value)
    sgm = {f"model.diffusion_model.{k}": v for k, v in stock.items()}
    with pytest.raises(WeightsError, match="original-layout SVD checkpoint"):
        check_state_dict(sgm, expected, path="Sonic/unet.pth", what="Sonic UNet", hints=HINTS["unet"])


class _TinyTokenAdapter(torch.nn.Module):
    """Same parameter names/shapes as the golden audio2token (a generic module, not the project's)."""

    def __init__(self, shapes):
        super().__init__()
        for name in ("proj1", "proj2", "proj3"):
            out_f, in_f = shapes[f"{name}.weight"]
            setattr(self, name, torch.nn.Linear(in_f, out_f))
        self.norm = torch.nn.LayerNorm(shapes["norm.weight"][0])


def test_load_strict_on_meta_and_cpu_modules():
    weights = load_golden("audio2token", "weights.safetensors")
    shapes = shapes_of(weights)
    with torch.device("meta"):
        meta_module = _TinyTokenAdapter(shapes)
    from_file = read_state_dict(GOLDEN / "audio2token" / "weights.safetensors", what="audio2token")
    assert any(t.data_ptr() % 64 for t in from_file.values())  # safetensors data is not aligned
    load_strict(meta_module, from_file, path="audio2token.pth", what="Sonic audio2token")
    assert not any(p.is_meta for p in meta_module.parameters())
    assert all(p.data_ptr() % 64 == 0 for p in meta_module.parameters())  # realigned for bit-exact CPU maths
    assert torch.equal(meta_module.proj3.weight, weights["proj3.weight"])
    cpu_module = _TinyTokenAdapter(shapes)
    load_strict(cpu_module, weights, path="audio2token.pth", what="Sonic audio2token")
    assert torch.equal(cpu_module.norm.bias, weights["norm.bias"])
    before = cpu_module.proj1.weight.clone()
    bucket = load_golden("audio2bucket", "weights.safetensors")
    with pytest.raises(WeightsError, match="looks like audio2bucket.pth"):
        load_strict(cpu_module, bucket, path="audio2token.pth", what="Sonic audio2token", hints=HINTS["audio2token"])
    assert torch.equal(cpu_module.proj1.weight, before)  # checked before anything was copied


def test_rife_prefix_rule():
    released = load_golden("rife", "weights.safetensors")
    assert all(k.startswith("module.") for k in released)
    stripped = rife_state_dict(released)
    assert len(stripped) == 160 and not any("module." in k for k in stripped)
    assert rife_state_dict(stripped).keys() == stripped.keys()
    with pytest.raises(WeightsError, match="`module.` prefix"):
        check_state_dict(released, shapes_of(stripped), path="flownet.pkl", what="RIFE", hints=HINTS["rife"])


# ------------------------------------------------------------------------------ convert
def _official_folder(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    weights = {"Sonic/audio2token.pth": load_golden("audio2token", "weights.safetensors"),
               "Sonic/audio2bucket.pth": load_golden("audio2bucket", "weights.safetensors"),
               "RIFE/flownet.pkl": load_golden("rife", "weights.safetensors"),
               "whisper-tiny/pytorch_model.bin": load_golden("audio_features", "whisper_weights.safetensors")}
    # Tied weights, as in a real Whisper pickle: two keys share one storage.
    weights["whisper-tiny/pytorch_model.bin"]["proj_out.weight"] = \
        weights["whisper-tiny/pytorch_model.bin"]["decoder.embed_tokens.weight"]
    for rel, sd in weights.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save(sd, root / rel)
    (root / "yoloface_v5m.pt").write_bytes(b"not converted")
    return weights


def test_convert_round_trips_bit_exactly_and_verifies_existing_twins(tmp_path):
    weights = _official_folder(tmp_path)
    twins = convert_checkpoints(tmp_path)
    expected_twins = {tmp_path / "Sonic/audio2token.safetensors", tmp_path / "Sonic/audio2bucket.safetensors",
                      tmp_path / "RIFE/flownet.safetensors", tmp_path / "whisper-tiny/model.safetensors"}
    assert set(twins) == expected_twins
    assert not list(tmp_path.rglob("*.partial")) and not (tmp_path / "yoloface_v5m.safetensors").exists()
    for rel, sd in weights.items():
        twin = tmp_path / rel
        twin = twin.with_name("model.safetensors") if twin.suffix == ".bin" else twin.with_suffix(".safetensors")
        assert safetensors_digests(twin) == state_dict_digests(sd), rel
        assert read_safetensors_metadata(twin)["source"] == Path(rel).name
    assert "module.block0.conv0.0.0.weight" in read_state_dict(tmp_path / "RIFE/flownet.safetensors", what="RIFE")

    mtimes = {p: p.stat().st_mtime_ns for p in twins}
    assert set(convert_checkpoints(tmp_path)) == expected_twins  # second run: verified, not rewritten
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())

    from safetensors.torch import save_file

    tampered = dict(weights["Sonic/audio2bucket.pth"])
    tampered["proj3.bias"] = tampered["proj3.bias"] + 1e-6
    save_file(tampered, str(tmp_path / "Sonic/audio2bucket.safetensors"))
    with pytest.raises(WeightsError, match="does not hold the same tensors.*1 different \\(e.g. proj3.bias\\)"):
        convert_checkpoints(tmp_path)


def test_convert_on_a_folder_without_weights(tmp_path):
    with pytest.raises(WeightsError, match="no Sonic, RIFE or Whisper weights"):
        convert_checkpoints(tmp_path)
    with pytest.raises(WeightsError, match="does not exist"):
        convert_checkpoints(tmp_path / "missing")
    (tmp_path / "picture.png").write_bytes(b"x")
    with pytest.raises(WeightsError, match="picture.png is a file, not a folder"):
        convert_checkpoints(tmp_path / "picture.png")


def test_convert_refuses_swapped_audio_adapters(tmp_path):
    """audio2token.pth and audio2bucket.pth swapped: refused before any twin of them is written."""
    sonic = tmp_path / "Sonic"
    sonic.mkdir()
    torch.save(load_golden("audio2bucket", "weights.safetensors"), sonic / "audio2token.pth")
    torch.save(load_golden("audio2token", "weights.safetensors"), sonic / "audio2bucket.pth")
    with pytest.raises(WeightsError, match="audio2token.pth holds audio2bucket weights.*swapped"):
        convert_checkpoints(tmp_path)
    assert not list(sonic.glob("*.safetensors")) and not list(sonic.glob(".*partial"))
    with pytest.raises(WeightsError, match="audio2bucket.pth holds audio2token weights"):
        convert_file(sonic / "audio2bucket.pth", what="Sonic audio2bucket.pth", role="audio2bucket")


def test_finder_prefers_twins_after_convert(tmp_path):
    _official_folder(tmp_path)
    torch.save(_golden_unet(), tmp_path / "Sonic/unet.pth")
    before = find_model_files(tmp_path, need_face_detector=False, svd_checkpoint=_dummy_svd(tmp_path))
    assert before.unet.name == "unet.pth" and before.rife.name == "flownet.pkl"
    assert before.whisper_weights.name == "pytorch_model.bin"
    convert_checkpoints(tmp_path)
    after = find_model_files(tmp_path, need_face_detector=False, svd_checkpoint=_dummy_svd(tmp_path))
    assert after.unet.name == "unet.safetensors" and after.rife.name == "flownet.safetensors"
    assert after.audio2token.name == "audio2token.safetensors"
    assert after.whisper_weights.name == "model.safetensors"
    assert zipfile.is_zipfile(before.unet)  # the release files stay untouched beside their twins


def _dummy_svd(root: Path) -> Path:
    (root / "whisper-tiny" / "config.json").write_text("{}")
    path = root / "svd_xt.safetensors"
    path.write_bytes(b"x")
    return path
