"""What to remove: cost (FLOPs/params terms), criteria (registry) and score, select (isomorphic
ranking), granularity (the backend's channel multiple), latency and latency_model (--latency)."""
