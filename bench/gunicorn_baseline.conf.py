"""gunicorn settings of the baseline: the gateway's worker class and connection cap.

Start: ``gunicorn -c bench/gunicorn_baseline.conf.py 'bench.baseline:create_app()'``.
Only what a fair comparison needs; everything else is gunicorn's default.
"""

import os

# Where clients connect: the same variable as the gateway's.
bind = [os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")]

# GATEWAY_WORKERS, as for the gateway; with more than one the app serves
# WebSocket only (polling would need sticky sessions).
workers = int(os.environ.get("GATEWAY_WORKERS", "1"))

# The same gevent-websocket worker as the gateway.
worker_class = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"

# The gateway's cap of open connections per worker (gunicorn's default, 1000,
# would stop the baseline at 1000 clients).
worker_connections = 20000

# No access log (one line per handshake), errors to stderr, no control socket.
accesslog = None
errorlog = "-"
loglevel = "info"
control_socket_disable = True
