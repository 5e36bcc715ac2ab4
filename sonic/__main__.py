import os
import sys

from .cli import main
from .devices import launched_by_torchrun

code = main()
if launched_by_torchrun():
    # A torchrun worker: its result is written and its status known. Skip the interpreter's
    # teardown, where gloo/NCCL threads can abort (SIGABRT) a rank whose peers already left.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
