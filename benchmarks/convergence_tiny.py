"""Convergence table of BENCHMARKS.md: tiny zoo, 64 px, 1.6 s of speech (20 frames, one window).

    PYTHONPATH=. python benchmarks/convergence_tiny.py   (from the repository root; writes /tmp/mg/conv)
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import FACE, SR, speech_like  # noqa: E402  (the tests' synthetic speech)

from sonic import SonicPipeline  # noqa: E402
from sonic.tools.convergence import convergence_table, format_convergence  # noqa: E402
from sonic.tools.zoo import write_tiny_zoo  # noqa: E402

torch.set_num_threads(1)
rng = np.random.default_rng(3)
img = np.full((80, 72, 3), 90, np.uint8)
img[20:60, 18:54] = (200, 160, 140)
portrait = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
out = Path("/tmp/mg/conv")
out.mkdir(parents=True, exist_ok=True)
zoo = write_tiny_zoo(out / "zoo", layout="official")
pipe = SonicPipeline.from_pretrained(zoo, device="cpu", dtype="fp32", face_detector=False)
t = time.time()
rows = convergence_table(pipe, portrait, (speech_like(1.6), SR), face_box=FACE, min_resolution=64)
print(format_convergence(rows))
print("reference mean |latent|:", {r["shift_offset"]: round(r["reference_mean_abs"], 4) for r in rows})
print(f"{time.time() - t:.0f} s")
json.dump(rows, open("/tmp/mg/conv/rows.json", "w"), indent=1)
