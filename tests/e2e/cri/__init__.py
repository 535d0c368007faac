"""What the containerd CRI test needs, made in this project: a protobuf codec
for the CRI messages (cri_proto), a CRI client over gRPC (cri_client), a
local pause image (pause_image, pause.c) and containerd in a lab VM
(containerd_run). Imported as the package ``cri`` (tests/e2e is on sys.path)."""
