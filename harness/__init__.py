"""Real parts to run the gateway against, shared by the tests and the benchmark: redis-server, gunicorn, clients."""
