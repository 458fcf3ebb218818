"""``python app -i INPUT -o OUTPUT -m MODELS [--threads N]``: the MONAI Deploy application (see app.py).

``--threads N`` is shapeqc's, not the Deploy SDK's (whose parser refuses arguments it does not know): it is taken
off the command line before the SDK reads it; ``SHAPEQC_THREADS=N`` in the environment says the same where a
container is configured by its environment. Without either, the app computes with the cores its process may use
(:mod:`shapeqc.runs.threads`). Set here, before the operators import torch, so that OpenMP waits passively.
"""

import argparse
import os
import sys

from shapeqc.runs.threads import use_threads

_parser = argparse.ArgumentParser(add_help=False)
_parser.add_argument("--threads", type=int, default=None)
_known, _rest = _parser.parse_known_args(sys.argv[1:])
sys.argv = [sys.argv[0], *_rest]
_threads = _known.threads
if _threads is None and os.environ.get("SHAPEQC_THREADS"):
    _threads = int(os.environ["SHAPEQC_THREADS"])
use_threads(_threads)

from app import ShapeQCApp  # noqa: E402  (after the threads are set)

if __name__ == "__main__":
    ShapeQCApp().run()
