"""``make run``: the gateway on one machine, from nothing, with a demo publisher.

Starts a private ``redis-server`` (when ``GATEWAY_REDIS_URL`` is unset) on a
Unix socket in a temporary folder, gunicorn with ``gunicorn.conf.py`` and two
workers, and the demo publisher; logs a token and how to connect; stops all
three on Ctrl-C or SIGTERM.

Ctrl-C in a terminal signals every process of the foreground group at once:
Redis would quit under the running workers, and gunicorn's workers would
quit abruptly. Redis and gunicorn therefore run in sessions of their own;
only this process hears Ctrl-C, and it stops gunicorn gracefully first and
Redis last.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis

from gateway import demo, logs
from gateway.auth import mint_token
from gateway.config import Config
from gateway.errors import ConfigError

log = logging.getLogger("gateway.run")

START_SECONDS = 20.0
STOP_SECONDS = 25.0


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` until true; raise ``TimeoutError`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {seconds:g} s")
        time.sleep(0.05)


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server")
    if server is None:
        raise ConfigError(
            "GATEWAY_REDIS_URL", "is unset and redis-server is not on PATH (apt-get install redis-server)"
        )
    sock = folder / "redis.sock"
    process = subprocess.Popen(
        [server, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(folder), "--logfile", str(folder / "redis.log")],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"unix://{sock}"
    client = redis.Redis.from_url(url)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except (redis.ConnectionError, FileNotFoundError):
            return False

    wait_for(answers, START_SECONDS, "redis-server")
    return process, url


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def dev_environment() -> dict[str, str]:
    """The environment, with two workers and a fresh secret unless set."""
    env = dict(os.environ)
    env.setdefault("GATEWAY_WORKERS", "2")
    if not env.get("GATEWAY_JWT_SECRET") and not env.get("GATEWAY_JWT_PUBLIC_KEY"):
        env["GATEWAY_JWT_SECRET"] = secrets.token_urlsafe(32)
    return env


def serve_demo(config: Config, base: str, gunicorn: subprocess.Popen[bytes], stopping: threading.Event) -> None:
    """Publish demo updates (until ``stopping``) and tell how to watch them, while gunicorn runs."""
    publisher = threading.Thread(
        target=demo.run, args=(config,), kwargs={"users": 3, "interval": 1.0, "rounds": 0, "stop": stopping},
        daemon=True,
    )
    publisher.start()
    log.info(
        "gateway ready on %s (%d workers), demo updates every second for users 1-3.\n"
        "  token for user 1: %s\n"
        "  watch it: %s -m gateway.watch %s <token>   (Ctrl-C here stops everything)",
        base, config.workers, mint_token(config, 1, 24 * 3600) if config.jwt_secret else "(set GATEWAY_JWT_SECRET)",
        os.path.relpath(sys.executable), base,
    )
    gunicorn.wait()  # until it ends, or a stop signal raises Stop here


class Stop(Exception):
    """SIGTERM or SIGINT arrived: the main thread unwinds, and stops what it started on its way out."""


def _stop(signum: int, _frame: object) -> None:
    """The stop signals' handler. It raises rather than setting an event: a handler runs between two bytecodes
    of the main thread, which may hold that very event's lock (inside ``Event.wait``), and ``Event.set`` would
    then wait for it for ever."""
    _ignore_stop_signals()  # once: the stop itself runs undisturbed
    raise Stop(signal.Signals(signum).name)


def _ignore_stop_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def main() -> int:
    env = dev_environment()
    logs.configure(env.get("GATEWAY_LOG_LEVEL", "INFO").upper(), env.get("GATEWAY_LOG_FORMAT", "text").lower())
    stopping = threading.Event()
    redis_process = gunicorn = None
    with tempfile.TemporaryDirectory(prefix="gateway-run-") as folder:
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):  # SIGINT too when started with it ignored
                signal.signal(signum, _stop)
            if not env.get("GATEWAY_REDIS_URL"):
                redis_process, env["GATEWAY_REDIS_URL"] = start_redis(Path(folder))
                log.info("embedded redis-server at %s", env["GATEWAY_REDIS_URL"])
            config = Config.from_env(env)
            command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "gateway.wsgi:app"]
            gunicorn = subprocess.Popen(command, env=env, start_new_session=True)
            base = f"http://{config.bind}"
            wait_for(
                lambda: ready(f"{base}/readyz") or gunicorn.poll() is not None,
                START_SECONDS, "gateway",
            )
            if gunicorn.poll() is not None:
                return gunicorn.returncode or 1
            serve_demo(config, base, gunicorn, stopping)
            log.info("stopping: gunicorn ended")
        except Stop as signalled:
            log.info("stopping (%s)", signalled)
        except (ConfigError, TimeoutError) as exc:
            log.error("%s", exc)
            return 1
        finally:
            _ignore_stop_signals()
            stopping.set()
            stop(gunicorn)
            stop(redis_process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
