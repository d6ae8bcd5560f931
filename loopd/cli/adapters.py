"""``loopd adapters list | show V | promote V | rollback | pin V | unpin``.

With a daemon running on the config's state (found through ``STATE/daemon.json``) every
verb goes over its HTTP endpoints, because only the daemon can load an adapter into
serving and probe it before the switch. With none running, the verb acts on the
database alone and says so: the daemon loads what is live when it starts.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from loopd import control
from loopd.adapters import BASE, AdapterRegistry
from loopd.config import ConfigError, LoopdConfig, load_config
from loopd.deploy import Deployer, DeployFailed, DeployRefused
from loopd.store import Store

VERBS_WITH_VERSION = ("show", "promote", "pin")
VERBS = ("list", "rollback", "unpin", *VERBS_WITH_VERSION)


class CommandFailed(Exception):
    """A verb that did not happen; the message says why."""


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("adapters", help=summary)
    parser.add_argument("verb", choices=VERBS)
    parser.add_argument(
        "version", nargs="?", help="a version: 3, v3 or v0003 (pin also takes 'base')"
    )
    parser.add_argument("--config", type=Path, required=True, help="the daemon's config file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
        version = _version_argument(args)
        result = _through_daemon(cfg, args.verb, version)
        if result is None:
            result = _on_database(cfg, args.verb, version)
    except (ConfigError, CommandFailed) as error:
        print(f"loopd adapters {args.verb}: {error}")
        return 1
    _print(args.verb, result, as_json=args.json)
    return 0


def _version_argument(args: argparse.Namespace) -> int | None:
    if args.verb not in VERBS_WITH_VERSION:
        return None
    text = (args.version or "").lower().removeprefix("v")
    if args.verb == "pin" and text == "base":
        return BASE
    if not text.isdigit() or int(text) == BASE:
        raise CommandFailed(f"give a version, as 3 or v0003 (got {args.version!r})")
    return int(text)


def _through_daemon(cfg: LoopdConfig, verb: str, version: int | None) -> Any | None:
    """The daemon's answer, or None when no daemon is running on this state."""
    address_file = cfg.state_dir / "daemon.json"
    if not address_file.is_file():
        return None
    address = json.loads(address_file.read_text())
    url = f"http://{address['host']}:{address['port']}"
    method, path = _route(verb, version)
    token = cfg.daemon.admin_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    try:
        response = httpx.request(method, url + path, headers=headers, timeout=600)
    except httpx.TransportError:
        return None  # a stale address file: the daemon is gone
    if response.status_code >= 400:
        raise CommandFailed(response.json().get("error", response.text))
    return response.json()


def _route(verb: str, version: int | None) -> tuple[str, str]:
    if verb == "list":
        return "GET", "/adapters"
    if verb == "show":
        return "GET", f"/adapters/{version}"
    if verb in control.ACTIONS:
        return "POST", f"/admin/adapters/{version}/{verb}"
    return "POST", f"/admin/adapters/{verb}"


def _on_database(cfg: LoopdConfig, verb: str, version: int | None) -> Any:
    if not cfg.db_path.exists():
        raise CommandFailed(f"no database at {cfg.db_path}; has `loopd run` been started?")
    store = Store(cfg.db_path)
    try:
        if verb == "list":
            return control.listing(store)
        if verb == "show":
            return control.show(store, version)
        deployer = Deployer(
            None,
            store,
            registry=AdapterRegistry(cfg.adapters_dir),
            prefix=cfg.deploy.adapter_prefix,
            watch_samples=cfg.deploy.watch_samples,
        )
        outcome = (
            control.ACTIONS[verb](deployer, version)
            if verb in control.ACTIONS
            else control.PLAIN_ACTIONS[verb](deployer)
        )
        note = " (no daemon running: recorded; it serves when the daemon starts)"
        return {**outcome.__dict__, "message": outcome.message + note}
    except (control.UnknownVersion, DeployRefused, DeployFailed) as error:
        raise CommandFailed(str(error)) from error
    finally:
        store.close()


def _print(verb: str, result: Any, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    elif verb == "list":
        Console().print(_table(result))
    elif verb == "show":
        _print_show(result)
    else:
        print(result["message"])


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table("version", "parent", "round", "created", "state", "decision")
    for row in rows:
        parent = "base" if row["parent"] is None else f"v{row['parent']:04d}"
        created = datetime.fromtimestamp(row["created_at"]).strftime("%Y-%m-%d %H:%M")
        decision = (row["decision"] or "")[:90]
        table.add_row(row["name"], parent, str(row["round"] or ""), created, row["state"], decision)
    return table


def _print_show(shown: dict[str, Any]) -> None:
    print(f"{shown['name']}  {shown['state']}  parent={shown['parent']}  {shown['path']}")
    for decision in shown["decisions"]:
        verdict = "promote" if decision["promote"] else "keep live"
        print(f"\n{decision['source']} decision: {verdict}: {decision['reason']}")
        for check in decision["checks"] or []:
            mark = "ok  " if check["passed"] else "FAIL"
            print(f"  {mark} {check['name']:<16} {check['detail']}")
