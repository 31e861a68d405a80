"""Per-instance health: the state words (states), the state machine (machine), and the probes
that feed it (probe: the protocol; probes: the registry; one sibling module per probe)."""
