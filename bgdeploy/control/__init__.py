"""The control plane: decides what happens (lock, deploy, reconcile)."""
