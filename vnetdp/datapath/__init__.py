"""The eBPF datapath: compiling and pinning programs, maps, attachments, node setup."""
