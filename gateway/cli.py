"""`klawd`: serve the gateway, and manage accounts and keys from the shell.

klawd serve [--config PATH] [--host H] [--port P] [--workers N]
klawd config check [--config PATH]
klawd accounts create --name N [--plan P] [--credits-usd X]
klawd accounts show ID
klawd accounts update ID [--plan P] [--credits-usd X] [--rpm N] [--rpd N] [--tpm N]
klawd keys create ACCOUNT_ID [--name N] [--expires-at WHEN] [--budget-usd-day X] [--models P]
                 [--tag NAME=VALUE] … (gateway/cli_keys.py)
klawd keys update|show|revoke KEY_ID, klawd keys list ACCOUNT_ID
klawd usage replay LOG|- …: settle a gateway's `unsettled usage entry` log lines (cli_usage.py)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from gateway import __version__, accounts, cli_keys, cli_usage, cli_webhooks, supervisor
from gateway.drain import (
    DRAIN_DIR_PREFIX,
    DRAIN_FILE_ENV,
    METRICS_DIR_PREFIX,
    SUPERVISOR_PID_ENV,
    kill_timeout_s,
)
from gateway.errors import GatewayError
from gateway.settings import ConfigError, Settings, config_path, load_settings
from gateway.store.base import Store, StoreError, open_store, sqlite_path


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_path(args.config, os.environ), os.environ)


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _with_store(settings: Settings, work: Callable[[Store], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        store = open_store(settings.store.url)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


# -- serve --------------------------------------------------------------------------------------
def _ensure_admin_token(settings: Settings) -> tuple[str | None, Path | None]:
    """The admin token: from its environment variable, else (embedded store) from a file in the
    data directory, created with a fresh random token on first start."""
    env_name = settings.server.admin_token_env
    if os.environ.get(env_name):
        return None, None
    if not settings.store.url.startswith("sqlite://"):
        return None, None
    token_file = sqlite_path(settings.store.url).parent / "admin-token"
    if token_file.exists():
        token = token_file.read_text(encoding="utf-8").strip()
    else:
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token = "klawd-admin-" + secrets.token_urlsafe(32)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
    os.environ[env_name] = token  # inherited by Granian's workers
    return token, token_file


def _first_start(settings: Settings, base_url: str) -> None:
    """On an empty store: one account with one key, printed with a ready-to-paste curl line."""

    async def bootstrap(store: Store) -> tuple[str, str] | None:
        if await store.count_accounts() > 0:
            return None
        account = await accounts.create_account(
            store, settings, accounts.NewAccount(name="default", plan="free")
        )
        _, plaintext = await accounts.create_key(store, account.id, accounts.NewKey(name="default"))
        return account.id, plaintext

    created = _with_store(settings, bootstrap)
    if created is None:
        return
    account_id, key = created
    body = '{"model":"klawd/echo","messages":[{"role":"user","content":"Hello, Klawd!"}]}'
    sys.stdout.write(
        f"\nFirst start: created account {account_id} (plan free) and its API key:\n\n"
        f"  KLAWD_API_KEY={key}\n\n"
        "The key is shown once. Try it:\n\n"
        f"  curl {base_url}/v1/chat/completions \\\n"
        f'    -H "Authorization: Bearer {key}" \\\n'
        f"    -H 'Content-Type: application/json' \\\n"
        f"    -d '{body}'\n\n"
    )
    sys.stdout.flush()


def cmd_serve(args: argparse.Namespace) -> int:
    """Prepares the server, then this process becomes its supervisor (gateway/supervisor.py)."""
    settings = _settings(args)
    host = args.host or settings.server.host
    port = args.port or settings.server.port
    workers = args.workers or settings.server.workers
    if workers > 1 and settings.store.url.startswith("sqlite://"):
        raise ConfigError(
            f"--workers {workers} needs a shared store: set store.url to redis://… "
            "(the embedded store is exact only within one process)"
        )
    if args.config:
        os.environ["KLAWD_CONFIG"] = str(Path(args.config).resolve())
    token, token_file = _ensure_admin_token(settings)
    metrics_dir = _prepare_metrics_dir()
    base_url = f"http://{host}:{port}"
    sys.stdout.write(
        f"Klawd Gateway {__version__} on {base_url} (store {settings.store.display_url()})\n"
    )
    if token is not None:
        sys.stdout.write(f"Admin token (saved in {token_file}): {token}\n")
    _first_start(settings, base_url)
    open_files, needed = raise_open_files_limit(settings.server.max_in_flight)
    if open_files < needed:
        sys.stdout.write(
            f"Open files limit {open_files} (hard): a worker can hold about "
            f"{max(0, open_files - FDS_RESERVED) // FDS_PER_REQUEST} streams, fewer than "
            f"server.max_in_flight = {settings.server.max_in_flight}\n"
        )
    if settings.server.metrics_port is not None:
        sys.stdout.write(f"Metrics on http://{host}:{settings.server.metrics_port}/metrics\n")
    drain_dir = Path(tempfile.mkdtemp(prefix=DRAIN_DIR_PREFIX))
    drain_file = drain_dir / "signalled"
    os.environ[DRAIN_FILE_ENV] = str(drain_file)  # inherited by Granian's workers
    os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())  # the supervisor's: `exec` keeps it
    remove = [str(drain_dir)]
    if metrics_dir.name.startswith(METRICS_DIR_PREFIX):
        remove.append(str(metrics_dir))
    supervisor.hand_over(
        supervisor.Spec(
            host=host,
            port=port,
            workers=workers,
            kill_timeout_s=kill_timeout_s(settings.server.streams.drain_grace_s),
            max_header_bytes=settings.server.max_header_bytes,
            max_in_flight=settings.server.max_in_flight,
            listen_backlog=settings.server.listen_backlog,
            metrics_port=settings.server.metrics_port,
            drain_file=str(drain_file),
            remove_dirs=remove,
        )
    )


# A request in flight holds two file descriptors (the client's socket, the upstream's); a
# worker holds some anyway (listener, event loops, store, metrics files, idle pool connections).
FDS_PER_REQUEST = 2
FDS_RESERVED = 256


def raise_open_files_limit(max_in_flight: int) -> tuple[int, int]:
    """Raises the soft limit of open files (inherited by Granian's workers) to what
    `max_in_flight` needs, at most to the hard limit; returns (the soft limit now, needed)."""
    needed = FDS_PER_REQUEST * max_in_flight + FDS_RESERVED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft, needed


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # not imported from gateway.metrics: see below


def _prepare_metrics_dir() -> Path:
    """prometheus-client's multiprocess mode: every worker writes its values to files in
    $PROMETHEUS_MULTIPROC_DIR, and /metrics sums them. It must be set before a worker imports
    prometheus_client, and emptied at start (a previous run's files would be summed in)."""
    given = os.environ.get(MULTIPROC_ENV)
    directory = Path(given) if given else Path(tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX))
    _empty_dir(directory)
    os.environ[MULTIPROC_ENV] = str(directory)  # inherited by Granian's workers
    return directory


def _empty_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# -- config, accounts, keys ---------------------------------------------------------------------
def cmd_config_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    sys.stdout.write(
        f"config OK: {len(settings.models)} models, {len(settings.providers)} providers, "
        f"{len(settings.plans)} plans, store {settings.store.display_url()}\n"
    )
    return 0


def cmd_accounts_create(args: argparse.Namespace) -> int:
    settings = _settings(args)
    new = accounts.NewAccount(name=args.name, plan=args.plan, credits_usd=args.credits_usd)

    async def work(store: Store) -> Any:
        return accounts.account_json(settings, await accounts.create_account(store, settings, new))

    _print_json(_with_store(settings, work))
    return 0


def cmd_accounts_show(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def work(store: Store) -> Any:
        return accounts.account_json(settings, await accounts.get_account(store, args.account_id))

    _print_json(_with_store(settings, work))
    return 0


def cmd_accounts_update(args: argparse.Namespace) -> int:
    settings = _settings(args)
    limits = None
    if args.rpm or args.rpd or args.tpm:
        limits = accounts.LimitsPatch(args.rpm, args.rpd, args.tpm)
    patch = accounts.AccountPatch(plan=args.plan, limits=limits, credits_usd=args.credits_usd)

    async def work(store: Store) -> Any:
        account = await accounts.update_account(store, settings, args.account_id, patch)
        return accounts.account_json(settings, account)

    _print_json(_with_store(settings, work))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="klawd", description="Klawd Gateway: one API, every model."
    )
    parser.add_argument("--version", action="version", version=f"klawd {__version__}")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", help="klawd.toml (default: $KLAWD_CONFIG, else built-ins)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[config], help="run the gateway (Granian)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)

    config_cmd = commands.add_parser("config", help="check a configuration file")
    config_sub = config_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", parents=[config], help="validate and summarise")
    check.set_defaults(func=cmd_config_check)

    accounts_cmd = commands.add_parser("accounts", help="create, show and update accounts")
    acc = accounts_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = acc.add_parser("create", parents=[config], help="create an account")
    create.add_argument("--name", required=True)
    create.add_argument("--plan", default="free")
    create.add_argument("--credits-usd", type=float)
    create.set_defaults(func=cmd_accounts_create)
    show = acc.add_parser("show", parents=[config], help="show an account")
    show.add_argument("account_id")
    show.set_defaults(func=cmd_accounts_show)
    update = acc.add_parser("update", parents=[config], help="change plan, limits, add credits")
    update.add_argument("account_id")
    update.add_argument("--plan")
    update.add_argument("--credits-usd", type=float, help="added to the balance")
    update.add_argument("--rpm", type=int, help="custom requests per minute")
    update.add_argument("--rpd", type=int, help="custom requests per day")
    update.add_argument("--tpm", type=int, help="custom tokens per minute")
    update.set_defaults(func=cmd_accounts_update)

    cli_keys.add_commands(commands, config)
    cli_webhooks.add_commands(commands, config)
    cli_usage.add_commands(commands, config)
    return parser


def main(argv: list[str] | None = None) -> int:
    handed = supervisor.handed_over()  # a `klawd` script installed before gateway.supervisor
    if handed is not None:
        return supervisor.supervise(handed)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        sys.stderr.write(f"klawd: configuration error: {exc}\n")
        return 2
    except GatewayError as exc:
        sys.stderr.write(f"klawd: {exc.type}: {exc.message}\n")
        return 1
    except StoreError as exc:
        sys.stderr.write(f"klawd: store error: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
