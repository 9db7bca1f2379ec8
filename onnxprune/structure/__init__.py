"""Channel structure: slots (what op rules in ``onnxprune.ops`` write against),
analyze (coupled groups, isomorphic classes, frozen channels), rewrite (slice the graph by a plan)."""
