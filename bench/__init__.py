"""vnetdp's benchmark harness (SPEC §8): the eBPF datapath against the
classic kernel bridge and against a bare veth, measured side by side."""
