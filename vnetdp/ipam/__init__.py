"""vnetdp-ipam: addresses from the VM NIC's secondary-IP pool (SPEC §3)."""
