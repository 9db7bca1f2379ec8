"""Channel structure: slots (what rule authors write against), rules (one tie/fix function per op),
analyze (coupled groups, isomorphic classes, frozen channels), rewrite (slice the graph by a plan)."""
