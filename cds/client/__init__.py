"""Client protocol v1: activation with a deployment token, status and configuration."""
