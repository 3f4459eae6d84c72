"""GET /healthz: database, scheduler and mail-transport state for load balancers and monitoring."""
