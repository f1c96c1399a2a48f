"""A gevent process holding one gateway Listener on a real Redis, driven line by line from stdin.

``python -m tests.integration.listener_child REDIS_URL PREFIX [HEALTH_SECONDS]``
(the health-check interval, shortened for a test). Commands:
``watch USER``, ``unwatch USER``, ``stop``. Every event is one JSON line on
stdout: ``{"connect": again}``, ``{"message": text}``, ``{"watched": user}``,
``{"error": text}``, ``{"stopped": true}``. Used by test_listener.py, which
cannot monkey-patch its own process.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402
from gevent.fileobject import FileObjectThread  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402

from gateway import listener as listener_module  # noqa: E402
from gateway.keys import Keys  # noqa: E402
from gateway.listener import Listener  # noqa: E402


def say(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Recorder:
    def on_message(self, data: bytes) -> None:
        say(message=data.decode())

    def on_connect(self, again: bool) -> None:
        say(connect=again)

    def on_idle(self, busy: bool) -> float:
        return 0.2


def listen(listener: Listener, recorder: Recorder) -> None:
    for data in listener.messages(recorder):
        recorder.on_message(data)


def main() -> None:
    url, prefix = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        listener_module.HEALTH_CHECK_INTERVAL = float(sys.argv[3])
        listener_module.DEAD_SECONDS = 3 * float(sys.argv[3])
    listener = Listener(lambda: redis.Redis.from_url(url, socket_timeout=5), ("flask-socketio",),
                        Keys(prefix).channel)
    running = gevent.spawn(listen, listener, Recorder())
    for line in FileObjectThread(sys.stdin):
        command, _, argument = line.strip().partition(" ")
        try:
            if command == "watch":
                listener.watch(argument)
                say(watched=argument)
            elif command == "unwatch":
                listener.unwatch(argument)
                say(unwatched=argument)
            elif command == "stop":
                listener.stop()
                running.join(5)
                say(stopped=running.dead)
                return
        except RedisError as exc:
            say(error=str(exc))


if __name__ == "__main__":
    main()
