// Sonic Load Audio in the ComfyUI frontend: an upload button and an audio player, like core LoadAudio.
//
// Why this file exists: our node declares `audio_upload: True`, so the frontend's "Comfy.UploadAudio"
// extension adds an `upload` input whose widget looks up the node's `audioUI` (player) widget. The
// frontend's "Comfy.AudioWidget" extension adds that `audioUI` input only to core audio nodes (LoadAudio,
// SaveAudio, ...), so without this file building our node throws ("reading 'options'") and the node is
// red. Here we give SonicAudioLoader the same `AUDIO_UI` input, placed before `upload` because widgets
// are created in the order of the inputs. The player and the button are not serialized into prompts;
// saved workflows keep `[file, null, null]` like LoadAudio. Checked with frontends 1.32.9, 1.48.7, 1.49.6
// and 1.58.1 (tests/test_comfyui_browser.py).
import { app } from "../../scripts/app.js";

const AUDIO_LOADERS = new Set(["SonicAudioLoader"]);

app.registerExtension({
  name: "Sonic.AudioLoader",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!AUDIO_LOADERS.has(nodeData?.name)) return;
    const required = nodeData.input?.required;
    if (!required || required.audioUI) return;
    // Mutate in place (other extensions hold this object): re-adding `upload` moves it after `audioUI`,
    // whether Comfy.UploadAudio ran before this hook or runs after it.
    const upload = required.upload;
    delete required.upload;
    required.audioUI = ["AUDIO_UI", {}];
    if (upload) required.upload = upload;
  },
});
