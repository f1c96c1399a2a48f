"""gunicorn settings for the push gateway.

Start: ``gunicorn -c gunicorn.conf.py gateway.wsgi:app``. Every value comes
from the ``GATEWAY_*`` environment through ``gateway.config``; a bad value
stops the master before any worker starts, with one line naming the variable.
"""

import os
import subprocess
import sys
import tempfile

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.logs import gunicorn_logconfig

try:
    _config = Config.from_env()
except ConfigError as exc:
    sys.exit(f"gateway: {exc}")

# Where clients connect: GATEWAY_BIND, 127.0.0.1:8000 unless told otherwise.
bind = [_config.bind]

# One process per core by default (GATEWAY_WORKERS). Each worker serves many
# thousands of WebSockets on gevent; a connection stays on the worker that
# accepted it, which is why the transport is WebSocket only with several.
workers = _config.workers

# The gevent-websocket worker (Flask-SocketIO's WebSocket transport on gevent), as the
# gateway extends it: its own connection handler, its servers known to it, and a stop
# that starts the moment gunicorn clears the worker's alive flag (gateway/gunicorn_worker.py).
worker_class = "gateway.gunicorn_worker.Worker"

# Open connections one worker accepts. gunicorn's default of 1000 would cap
# the gateway at 1000 clients per worker; the file-descriptor limit
# (LimitNOFILE in deploy/systemd, per process) must stay above this. The
# gateway keeps the last 100 for plain HTTP: a worker holding 19,900
# WebSockets answers the next upgrade 503, so that the load balancer tries
# another machine while this one's health probes still get in.
worker_connections = 20000

# Each worker imports the app itself, after gevent patched the standard
# library: a preloaded app would share one Redis connection pool across forks.
preload_app = False

# Seconds a worker may go without notifying the master before it is killed.
# Async workers notify from their event loop, so long WebSockets are fine.
timeout = 30

# Seconds a stopping worker has to disconnect its clients and remove its
# records (SIGTERM, SIGHUP reload, max-requests) before it is killed.
graceful_timeout = 20

# Worker recycling after N requests is off, and would stay off if set: the
# gevent-websocket worker serves through gevent's pywsgi handler, which never
# counts requests for gunicorn. Recycle workers with SIGHUP (systemctl reload).
max_requests = 0

# Seconds an idle HTTP keep-alive connection (health probes) stays open.
keepalive = 5

# gunicorn's control socket would land in $HOME/.gunicorn and collide between
# instances on one machine; the gateway is steered by signals instead.
control_socket_disable = True

# Log level and destination: stderr, at GATEWAY_LOG_LEVEL, in the gateway's
# own format (GATEWAY_LOG_FORMAT: text, or json for one object a line).
loglevel = _config.log_level.lower()
errorlog = "-"
logconfig_dict = gunicorn_logconfig(_config.log_level, _config.log_format)

# Access log off: one line per WebSocket handshake adds noise, not insight;
# /metrics counts connections instead.
accesslog = None

# Process name in ps and top.
proc_name = "push-gateway"

# The master keeps none of the gateway's modules: on SIGHUP it reads this file
# again and forks new workers, which must import the code now on disk, not
# what the master loaded at its start.
for _name in [name for name in sys.modules if name == "gateway" or name.startswith("gateway.")]:
    del sys.modules[_name]

# Every worker writes its metrics under this folder and /metrics sums them.
# It must be set before a worker imports prometheus_client.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")


def on_starting(server):
    """Refuse TLS in gunicorn; start from empty metrics (files of an earlier run would be summed in).

    The gateway writes to client sockets without blocking (gateway.websocket.Outbox),
    which a TLS socket does not allow: TLS ends in front of gunicorn (deploy/nginx).
    """
    if server.cfg.is_ssl:
        sys.exit("gateway: certfile: TLS ends in front of gunicorn (nginx or the load balancer), not in it: "
                 "the gateway writes to client sockets without blocking, which TLS sockets do not allow")
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith(".db"):
            os.unlink(os.path.join(folder, name))


def child_exit(server, worker):
    """In the master, after any worker exit, SIGKILL included: drop what it left.

    The sweep runs as ``gateway sweep --pid`` in a process of its own: the
    master never imports redis (a worker forked after that would inherit
    modules imported before gevent patched them) and never waits on Redis.
    A sweep that fails leaves the records to the live workers' lease sweep.
    """
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    if not server.LISTENERS:
        # The whole instance is stopping (its listeners are closed first):
        # each worker removed its own records, and Redis may be going away too.
        return
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "sweep", "--pid", str(worker.pid)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
    )


def worker_exit(server, worker):
    """In the worker, as it exits: remove its records (a no-op when already stopped)."""
    gateway = getattr(worker.wsgi, "extensions", {}).get("gateway")
    if gateway is not None:
        gateway.stop()
