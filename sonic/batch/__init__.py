"""Batch production: a resumable list of Sonic jobs run by local workers, Ray actors or ComfyUI servers.

manifest  reads a CSV/JSONL job list and checks every row before any model loads
jobs      job identity (hash of inputs + settings), per-job records, the report
runner    runs one job inside a worker that holds the models (with the portrait cache)
worker    the local worker process (`python -m sonic.batch.worker`)
local     the scheduler and the local executor (one worker process per device)
ray_executor, comfyui_executor   the other two executors
progress  the bar over jobs and the one line per finished job
"""
