"""The buyer's decisions, sans-I/O: which offer to take, what to check before signing."""
