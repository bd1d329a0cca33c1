"""Hardware: the machine the model runs on (board profiles, cores, memory, power sensors)."""
