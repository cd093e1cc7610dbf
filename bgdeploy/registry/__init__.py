"""The registry: the single source of truth for deployments, boots, workspaces and events."""
