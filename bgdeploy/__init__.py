"""bgdeploy: zero-downtime blue/green rollouts for a long-running local HTTP daemon."""

__version__ = "0.1.0"
