"""Job floor: what one sweep job is and does (its admission, graph,
checkpointer, scoring, forks)."""
