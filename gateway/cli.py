"""The ``gateway`` command: publish, mint a token, check the configuration, run the demo."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from redis.exceptions import RedisError

from gateway import logs
from gateway.auth import mint_token
from gateway.config import Config
from gateway.errors import ConfigError, GatewayError
from gateway.publisher import Publisher

#: The longest lifetime ``gateway token`` gives a token (a revocation or kick is what ends a session sooner).
MAX_TOKEN_SECONDS = 86400


def _config(server: bool = False) -> Config:
    config = Config.from_env(server=server)
    logs.configure(config.log_level, config.log_format)
    return config


@click.group()
def cli() -> None:
    """Operate the push gateway. Settings come from GATEWAY_* variables."""


@cli.command()
@click.argument("user")
@click.argument("topic")
@click.argument("data")
def publish(user: str, topic: str, data: str) -> None:
    """Publish DATA (JSON) to USER's TOPIC; print the update's seq."""
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="DATA") from None
    with Publisher(config=_config()) as publisher:
        try:
            seq = publisher.publish(user, topic, payload)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(seq)


@cli.command()
@click.argument("user")
@click.option("--revoke", is_flag=True, help="Also refuse, for good, every token of USER issued before now.")
def kick(user: str, revoke: bool) -> None:
    """Close every live connection of USER on every worker of every instance."""
    with Publisher(config=_config()) as publisher:
        try:
            told = publisher.revoke_tokens(user) if revoke else publisher.disconnect_user(user)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="USER") from None
    revoked = ", its tokens issued until now revoked" if revoke else ""
    click.echo(f"user {user} kicked{revoked}: {told} workers told")


@cli.command()
@click.argument("user")
@click.option("--ttl", default=3600, show_default=True, type=click.IntRange(1, MAX_TOKEN_SECONDS),
              help="Seconds the token stays valid, one day at most: a session lives no longer than its token.")
def token(user: str, ttl: int) -> None:
    """Mint a token for USER with GATEWAY_JWT_SECRET (tests and demos)."""
    try:
        click.echo(mint_token(_config(), user, ttl))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="USER") from None


@cli.command()
@click.option("--pid", type=int, help="Only the worker process PID of this host (gunicorn's child_exit).")
def sweep(pid: int | None) -> None:
    """Remove now the records of dead workers: lease ended, or process gone on this host."""
    from gateway.lease import sweep as sweep_dead
    from gateway.lease import sweep_process
    from gateway.redis_client import connect
    from gateway.subscriptions import Registry

    config = _config()
    if not config.redis_url:
        raise ConfigError("GATEWAY_REDIS_URL", "is not set")
    client = connect(config.redis_url, name="gateway-sweep", command_timeout=2, retries=1)
    try:
        registry = Registry(client, config.key_prefix, topics=config.topics, partitions=config.partitions)
        if pid is not None:
            removed = sweep_process(registry, pid)
            if removed:
                log = logging.getLogger("gateway.cli")
                log.info("removed the records of %d connections of worker %d", removed, pid)
            return
        swept = sweep_dead(registry)
    finally:
        client.close()
    for worker, connections in swept.items():
        click.echo(f"{worker}: {connections} connections removed")
    click.echo(f"swept {len(swept)} dead workers")


@cli.command()
@click.option("--user", help="Show the topics USER is subscribed to.")
@click.option("--topic", help="Show the users subscribed to TOPIC.")
def subs(user: str | None, topic: str | None) -> None:
    """Who is subscribed to what: for a user, a topic, or every topic."""
    with Publisher(config=_config()) as publisher:
        try:
            if user is not None:
                click.echo(" ".join(sorted(publisher.user_topics(user))))
                return
            for name in [topic] if topic is not None else list(publisher.config.topics):
                users = sorted(publisher.subscribers(name))
                click.echo(f"{name} ({len(users)}): {' '.join(users)}")
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None


@cli.command("check-config")
def check_config() -> None:
    """Validate the environment and print the effective settings, secrets masked."""
    for variable, value in _config(server=True).describe().items():
        click.echo(f"{variable}={value}")


@cli.command()
@click.option("--users", default=3, show_default=True, help="Demo users 1..N.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between rounds of updates.")
@click.option("--rounds", default=0, help="Rounds to publish; 0 runs until interrupted.")
def demo(users: int, interval: float, rounds: int) -> None:
    """Publish changing balance, positions, PnL and orders for demo users."""
    from gateway.demo import run

    config = _config()
    if config.jwt_secret:
        click.echo(f"demo: publishing for users 1..{users}; a token for user 1:\n{mint_token(config, 1, 24 * 3600)}")
    try:
        run(config, users=users, interval=interval, rounds=rounds)
    except KeyboardInterrupt:
        click.echo("demo: stopped")


def _guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    def main(*args: Any, **kwargs: Any) -> Any:
        # Metrics belong to gunicorn's workers: a command run beside them (the
        # master's sweep, a timer) must not add files to their folder.
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            sys.exit(f"gateway: {exc}")
        except (GatewayError, RedisError) as exc:
            logging.getLogger("gateway.cli").debug("command failed", exc_info=True)
            sys.exit(f"gateway: {exc}")

    return main


main = _guarded(cli)


if __name__ == "__main__":
    main()
