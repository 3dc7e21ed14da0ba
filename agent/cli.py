"""``meter-agent``: the command line (CONTRACT 9).

Exit 0 on success, 2 on bad input with a one-line reason on stderr. Read-only
commands read the store directly (``Store.open_readonly``); commands that
change state go through the running agent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import DEFAULT_CONFIG, Config, load_config
from agent.errors import AgentError, ConfigError


class UsageError(Exception):
    """Bad input from the user: one line, exit 2."""


def _config(path: str) -> Config:
    return load_config(path)


def _print(data: Any, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


def _paise(value: int | None) -> str:
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    return f"{sign}₹{abs(value) // 100}.{abs(value) % 100:02d}"


# -- subcommands -------------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for key, msg in exc.errors:
            print(f"{key}: {msg}", file=sys.stderr)
        return 2
    summary = {"file": path, "gateway": cfg.gateway.id, "buses": len(cfg.buses),
               "meters": len(cfg.meters), "accounts": len(cfg.accounts),
               "tariffs": [t.name for t in cfg.tariffs]}
    _print(summary, args.json, f"{path}: ok (gateway {cfg.gateway.id}, {len(cfg.buses)} "
           f"bus(es), {len(cfg.meters)} meter(s), {len(cfg.accounts)} account(s))")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from agent.runtime import Runtime

    cfg = _config(args.config)
    runtime = Runtime(cfg)

    def stop(_signum: int, _frame: Any) -> None:
        runtime.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runtime.run()
    return 0


def _status_file(cfg: Config) -> dict[str, Any] | None:
    path = Path(cfg.gateway.data_dir) / "status.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(data.get("pid", 0)), 0)
    except (OSError, ValueError):
        data["running"] = False
    else:
        data["running"] = True
    return data


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _config(args.config)
    data = _status_file(cfg)
    if data is None:
        raise UsageError(f"no status in {cfg.gateway.data_dir} (has the agent run with "
                         f"{args.config}?)")
    if args.json:
        _print(data, True, "")
        return 0
    link = data["link"]
    backlog = data["backlog"]
    lines = [
        f"gateway {data['gateway']}  version {data['version']}  boot {data['boot']}  "
        f"{'running' if data['running'] else 'NOT RUNNING (last known state)'}",
        f"link    {'connected' if link['connected'] else 'DOWN'} to {link['host']}:"
        f"{link['port']}  reconnects {link['reconnects']}  backlog {backlog['messages']} "
        f"msg(s), oldest {backlog['oldest_age_s'] or 0}s",
    ]
    for bus in data["buses"]:
        lines.append(f"bus     {bus['name']} {bus['protocol']} on {bus['port']}"
                     + (f"  ERROR {bus['error']}" if bus["error"] else ""))
    lines.append(f"{'meter':<12} {'kWh':>10} {'W':>7} {'balance':>12} {'relay':<8} online")
    for m in data["meters"]:
        r = m["reading"] or {}
        kwh = f"{r['import_wh'] / 1000:.3f}" if "import_wh" in r else "-"
        lines.append(f"{m['id']:<12} {kwh:>10} {r.get('p_w', '-')!s:>7} "
                     f"{_paise(m['balance']):>12} {m['relay']['actual'] or '?':<8} "
                     f"{'yes' if m['online'] else 'no' if m['online'] is False else '?'}")
    print("\n".join(lines))
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    from agent.buffer.journal import Journal
    from agent.buffer.store import Store

    cfg = _config(args.config)
    store = Store.open_readonly(cfg.gateway.data_dir)
    try:
        journal = Journal(store)
        try:
            acct = journal.account(args.account)
        except AgentError as exc:
            raise UsageError(str(exc)) from exc
        entries = journal.recent(args.account, args.limit)
    finally:
        store.close()
    data = {"account": acct.id, "tariff": acct.tariff, "balance": acct.balance, "n": acct.n,
            "entries": [e.wire() for e in entries]}
    text = [f"account {acct.id}  tariff {acct.tariff}  balance {_paise(acct.balance)}  "
            f"entries {acct.n}"]
    for e in entries:
        text.append(f"  #{e.n:<6} {e.t:>11} {e.kind:<7} {_paise(e.amt):>11} "
                    f"-> {_paise(e.bal):>11}  {e.ref}")
    _print(data, args.json, "\n".join(text))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(args.config, duration_s=args.duration)


def cmd_not_yet(args: argparse.Namespace) -> int:
    raise UsageError(f"'{args.command}' is not available in this version yet")


# -- parser ------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"board config (default: {DEFAULT_CONFIG})")
    common.add_argument("--json", action="store_true", help="print data as JSON")
    common.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser = argparse.ArgumentParser(prog="meter-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"meter-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", parents=[common], help="run the agent")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", parents=[common],
                       help="simulated meters + broker + head-end + agent, live view")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("check-config", parents=[common], help="validate a board config")
    p.add_argument("file", nargs="?", default=None)
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("status", parents=[common], help="gateway, buses, meters, backlog, link")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("ledger", parents=[common], help="balance and recent entries")
    p.add_argument("account")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_ledger)
    for name in ("scan", "token", "relay"):
        p = sub.add_parser(name, parents=[common], help="(not yet)")
        p.add_argument("rest", nargs="*")
        p.set_defaults(func=cmd_not_yet)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"meter-agent: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"meter-agent: {args.config}: {exc}", file=sys.stderr)
        return 2
    except AgentError as exc:
        print(f"meter-agent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
