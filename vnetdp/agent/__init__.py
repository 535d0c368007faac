"""The node agent: a warm fast path for CNI calls (server), the framing it
shares with the entry point (wire), and SNAT sweeps. ``wire`` is imported by
the entry point before site-packages: this package imports nothing."""
