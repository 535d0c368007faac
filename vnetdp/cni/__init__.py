"""The CNI protocol, as a library under both plugins: spec (versions, codes,
environment, results), skel (one call of a plugin process) and invoke
(calling another plugin). It imports neither plugin."""
