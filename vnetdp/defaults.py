"""Node defaults, defined once. Standard library only (``os``): the CNI entry
point imports this before anything else, and every import there is start-up
time of every CNI call."""
import os

DEFAULT_STATE_DIR = "/var/lib/vnetdp"
DEFAULT_BPFFS_DIR = "/sys/fs/bpf/vnetdp"
AGENT_SOCKET = "agent.sock"  # in the state directory
#: In the state directory: CNI GC and reconcile hold it alone, endpoint changes
#: (CNI ADD/DEL, the Docker driver) shared.
GC_LOCK = "gc.lock"


def state_dir(conf: dict | None = None) -> str:
    """The state directory: the config's ``stateDir``, else the node's
    (``VNETDP_STATE_DIR``, baked in by ``vnetdp install``), else the default."""
    return (conf or {}).get("stateDir") or os.environ.get("VNETDP_STATE_DIR") or DEFAULT_STATE_DIR


def bpffs_dir(conf: dict | None = None) -> str:
    """The pin directory, chosen the same way as ``state_dir``."""
    return (conf or {}).get("bpffsDir") or os.environ.get("VNETDP_BPFFS_DIR") or DEFAULT_BPFFS_DIR


def agent_socket(state: str | None = None) -> str:
    return os.path.join(state or state_dir(), AGENT_SOCKET)
