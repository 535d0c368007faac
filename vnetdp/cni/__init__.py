"""The CNI side of vnetdp: protocol, configuration, and the two plugins."""
