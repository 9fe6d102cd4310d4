"""Driver floor: what runs in the sweep's own process (callback, start check,
planner, envs, Ctrl-C)."""
