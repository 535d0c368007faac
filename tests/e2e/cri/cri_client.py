"""A CRI client, as a kubelet talks to its runtime: gRPC over the runtime's
unix socket, ``/runtime.v1.RuntimeService/<Method>`` and
``/runtime.v1.ImageService/<Method>``, the messages encoded by ``cri_proto``
(the channel only moves bytes: identity serializers)."""
from __future__ import annotations

import time
import uuid

import grpc

from . import cri_proto as proto

RUNTIME = "runtime.v1.RuntimeService"
IMAGES = "runtime.v1.ImageService"


class CriError(Exception):
    """A call the runtime answered with a gRPC error (``code``: grpc.StatusCode)."""

    def __init__(self, method: str, code, details: str) -> None:
        super().__init__(f"{method}: {getattr(code, 'name', code)}: {details}")
        self.method, self.code, self.details = method, code, details


def _identity(b: bytes) -> bytes:
    return b


class CriClient:
    """One channel to a CRI runtime. Every sandbox this client created is in
    ``created`` (teardown removes whatever is left of them)."""

    def __init__(self, socket_path: str, timeout: float = 120.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.created: list[str] = []

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the wire -------------------------------------------------------
    def call(self, service: str, method: str, request: dict, timeout: float | None = None) -> dict:
        """``method``'s reply as a dict (request ``<method>Request``, reply
        ``<method>Response``; ListPodSandbox and friends follow the pattern)."""
        rpc = self.channel.unary_unary(f"/{service}/{method}", request_serializer=_identity,
                                       response_deserializer=_identity)
        try:
            raw = rpc(proto.encode(f"{method}Request", request), timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise CriError(method, e.code(), e.details() or "") from None
        return proto.decode(f"{method}Response", raw)

    # --- RuntimeService -------------------------------------------------
    def version(self, timeout: float | None = None) -> dict:
        return self.call(RUNTIME, "Version", {"version": "v1"}, timeout)

    def run_pod_sandbox(self, config: dict, runtime_handler: str = "") -> str:
        reply = self.call(RUNTIME, "RunPodSandbox", {"config": config, "runtime_handler": runtime_handler})
        self.created.append(reply["pod_sandbox_id"])
        return reply["pod_sandbox_id"]

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self.call(RUNTIME, "StopPodSandbox", {"pod_sandbox_id": sandbox_id})

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self.call(RUNTIME, "RemovePodSandbox", {"pod_sandbox_id": sandbox_id})

    def pod_sandbox_status(self, sandbox_id: str, verbose: bool = False) -> dict:
        """The whole reply: ``status`` (id, state, network.ip, ...) and, when
        verbose, ``info`` (containerd: key "info", a JSON document)."""
        return self.call(RUNTIME, "PodSandboxStatus", {"pod_sandbox_id": sandbox_id, "verbose": verbose})

    def list_pod_sandbox(self, filter: dict | None = None) -> list[dict]:
        return self.call(RUNTIME, "ListPodSandbox", {"filter": filter})["items"]

    # --- ImageService ---------------------------------------------------
    def image_status(self, image: str) -> dict | None:
        """The runtime's record of ``image`` (id, repo_tags, ...), None when it has none."""
        return self.call(IMAGES, "ImageStatus", {"image": {"image": image}})["image"]

    # --- helpers --------------------------------------------------------
    def wait_ready(self, seconds: float, alive=lambda: True) -> dict:
        """Version, once the runtime answers it (containerd's CRI answers only
        once initialized); ``alive()`` false stops the wait early."""
        deadline = time.monotonic() + seconds
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError(f"the runtime exited before answering: {last}")
            try:
                return self.version(timeout=2)
            except CriError as e:
                last = e
            time.sleep(0.1)
        raise TimeoutError(f"no CRI answer on {self.socket_path} in {seconds:.0f} s: {last}")

    def wait_image(self, image: str, seconds: float = 30) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = self.image_status(image)
            if found is not None:
                return found
            time.sleep(0.1)
        raise TimeoutError(f"the runtime does not know image {image} after {seconds:.0f} s")

    def remove_all(self) -> list[str]:
        """Stop and remove every sandbox the runtime lists and every one this
        client made; what could not be removed, with why."""
        ids = list(dict.fromkeys([s["id"] for s in self.list_pod_sandbox()] + self.created))
        problems = []
        for sid in ids:
            try:
                self.stop_pod_sandbox(sid)
                self.remove_pod_sandbox(sid)
            except CriError as e:
                if e.code != grpc.StatusCode.NOT_FOUND:
                    problems.append(f"{sid[:12]}: {e}")
        return problems


#: The VNet's DNS resolver (Azure's), as a pod's resolv.conf would name it.
DNS_SERVER = "168.63.129.16"


def pod_sandbox_config(name: str, namespace: str = "default", uid: str | None = None, attempt: int = 0,
                       log_directory: str = "", port_mappings: list[dict] | None = None,
                       labels: dict | None = None, dns_servers: tuple[str, ...] = (DNS_SERVER,)) -> dict:
    """A PodSandboxConfig as a kubelet sends one for a pod on the pod network:
    pod metadata, hostname, log directory, DNS (so the runtime writes the
    pod's resolv.conf instead of copying the host's), and Linux namespace
    options (network and IPC per pod, PID per container, as kubelet's default)."""
    return {
        "metadata": {"name": name, "uid": uid or str(uuid.uuid4()), "namespace": namespace, "attempt": attempt},
        "hostname": name[:63],
        "log_directory": log_directory,
        "dns_config": {"servers": list(dns_servers), "searches": [f"{namespace}.svc.cluster.local"],
                       "options": ["ndots:5"]} if dns_servers else None,
        "port_mappings": port_mappings or [],
        "labels": {"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace, **(labels or {})},
        "linux": {"cgroup_parent": "",
                  "security_context": {"namespace_options": {"network": proto.POD, "pid": proto.CONTAINER,
                                                             "ipc": proto.POD}}},
    }
