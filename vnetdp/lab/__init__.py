"""The built-in lab: an emulated cloud virtual network in network namespaces (SPEC §7)."""
