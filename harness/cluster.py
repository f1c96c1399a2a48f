"""A real Redis Cluster on the loopback for tests and the benchmark: primaries with a replica each.

Every node is a ``redis-server`` process of its own, started with a client
port and a cluster bus port both chosen free, and stopped by its PID. The
cluster is formed by ``redis-cli --cluster create``, as an operator would.
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster

from harness.processes import free_port, wait_for

#: Milliseconds a node may be silent before the others take it for failed.
NODE_TIMEOUT_MS = 2000


@dataclass
class ClusterNodeProcess:
    """One node: its ports, its folder and its process."""

    folder: Path
    port: int = field(default_factory=free_port)
    bus_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-port", str(self.bus_port), "--cluster-config-file", str(self.folder / "nodes.conf"),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def info(self, section: str) -> dict[str, str]:
        return {key: str(value) for key, value in self.client().info(section).items()}

    def cluster_state(self) -> str:
        reply = self.client().execute_command("CLUSTER", "INFO")
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        return fields.get("cluster_state", "").strip()

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.process.wait(10)


class RedisClusterServers:
    """``primaries`` primaries with ``replicas`` replicas each, formed into one cluster."""

    def __init__(self, folder: Path, primaries: int = 3, replicas: int = 1) -> None:
        self.nodes = [ClusterNodeProcess(folder / f"node{n}") for n in range(primaries * (1 + replicas))]
        self.replicas = replicas

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.nodes[:3])

    def start(self) -> RedisClusterServers:
        """Start every node and form the cluster; on any failure, stop the nodes started before raising."""
        try:
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                wait_for(node.answers, 10, f"redis-server {node.address}")
            created = subprocess.run(
                ["redis-cli", "--cluster", "create", *(node.address for node in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=60,
            )
            assert created.returncode == 0, created.stdout + created.stderr
            wait_for(self.healthy, 30, "cluster_state:ok on every node, every replica in sync")
        except BaseException:
            self.stop()
            raise
        return self

    def healthy(self) -> bool:
        for node in self.nodes:
            if not node.answers() or node.cluster_state() != "ok":
                return False
            replication = node.info("replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def client(self) -> RedisCluster:
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", node.port) for node in self.nodes[:3]],
                            socket_timeout=5)

    def primaries(self) -> list[ClusterNodeProcess]:
        return [node for node in self.nodes if node.answers() and node.info("replication")["role"] == "master"]

    def flush(self) -> None:
        for node in self.primaries():
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
