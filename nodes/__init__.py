"""The Sonic node pack (V1 node API). Node ids are part of saved workflows: never rename them."""

from .common import register_model_folder
from .finishing import SonicPostProcess, SonicVideoOutput
from .generation import SONIC_PreData, SonicInference, SonicLatentDecoder
from .loaders import SonicAudioLoader, SonicImageLoader, SonicModelLoader

register_model_folder()

NODE_CLASS_MAPPINGS = {
    "SonicModelLoader": SonicModelLoader,
    "SonicAudioLoader": SonicAudioLoader,
    "SonicImageLoader": SonicImageLoader,
    "SONIC_PreData": SONIC_PreData,
    "SonicInference": SonicInference,
    "SonicLatentDecoder": SonicLatentDecoder,
    "SonicPostProcess": SonicPostProcess,
    "SonicVideoOutput": SonicVideoOutput,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "SonicModelLoader": "Sonic Model Loader",
    "SonicAudioLoader": "Sonic Load Audio",
    "SonicImageLoader": "Sonic Load Image",
    "SONIC_PreData": "Sonic Prepare (face crop + audio)",
    "SonicInference": "Sonic Inference (sampler)",
    "SonicLatentDecoder": "Sonic Decode",
    "SonicPostProcess": "Sonic PostProcess (interpolate, fix, paste back)",
    "SonicVideoOutput": "Sonic Video Output (MP4)",
}
