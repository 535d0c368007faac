"""Security rules in the cloud's model: network security groups (nsg)."""
