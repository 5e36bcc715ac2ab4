"""How close Euler and DPM-Solver++(2M) get to a fine Euler solution of the same ODE.

`convergence_table(pipe, image, audio)` encodes the job once, samples it with a 100-step Euler
reference and with each sampler at 8, 12, 16 and 25 steps (the same Karras schedule family,
sigma_max -> 0), and reports the mean absolute latent error against the reference. This is
about the integrators only: with random (tiny-zoo) weights it says nothing about picture quality.

With the default window shift the denoiser itself changes from step to step (the window grid
moves by `shift_offset` frames each step), so the table is computed both with `shift_offset=0`
(one fixed ODE) and with the official shift.
"""

from __future__ import annotations

from ..config import SAMPLERS

STEPS = (8, 12, 16, 25)
REFERENCE_STEPS = 100


def convergence_table(pipe, image, audio, *, steps=STEPS, reference_steps: int = REFERENCE_STEPS,
                      shift_offsets=(0, 7), seed: int = 0, **job) -> list[dict]:
    """Rows `{shift_offset, sampler, steps, mean_abs_error, reference_mean_abs}` (latent units)."""
    prepared = pipe.prepare(image, audio, **job)
    cond = pipe.encode(prepared)
    rows = []
    for shift in shift_offsets:
        reference = pipe.sample(cond, inference_steps=reference_steps, seed=seed, shift_offset=shift, sampler="euler")
        scale = float(reference.abs().mean())
        for sampler in SAMPLERS:
            for count in steps:
                latents = pipe.sample(cond, inference_steps=count, seed=seed, shift_offset=shift, sampler=sampler)
                rows.append(dict(shift_offset=shift, sampler=sampler, steps=count,
                                 mean_abs_error=float((latents - reference).abs().mean()),
                                 reference_mean_abs=scale))
    return rows


def format_convergence(rows: list[dict]) -> str:
    """A Markdown table: one row per (shift, sampler), one column per step count."""
    steps = sorted({r["steps"] for r in rows})
    lines = ["| window shift | sampler | " + " | ".join(f"{s} steps" for s in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for shift in sorted({r["shift_offset"] for r in rows}):
        for sampler in SAMPLERS:
            cells = {r["steps"]: r["mean_abs_error"] for r in rows if r["shift_offset"] == shift and r["sampler"] == sampler}
            if cells:
                lines.append(f"| {shift} | {sampler} | " + " | ".join(f"{cells[s]:.4f}" for s in steps) + " |")
    return "\n".join(lines)
