"""Where vnetdp finds its own files."""
from __future__ import annotations

import os
from pathlib import Path

#: The C sources of the datapath (``bpf/`` beside the package in a checkout).
BPF_DIR = Path(os.environ.get("VNETDP_BPF_DIR", Path(__file__).resolve().parent.parent / "bpf"))
