"""Routing: the table the control plane publishes, its watcher, the router's decisions, inference auth."""
