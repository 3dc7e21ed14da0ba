"""``meter-agent``: the command line (CONTRACT 9).

Exit 0 on success, 2 on bad input with a one-line reason on stderr. Read-only
commands read the store directly (``Store.open_readonly``); commands that
change state go through the running agent.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent import __version__
from agent.config import DEFAULT_CONFIG, Config, load_config
from agent.errors import AgentError, ConfigError
from agent.logs import LEVELS, setup_logging


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


def _local(t: int | None, cfg: Config) -> str:
    """A Unix time as the gateway's local time (CONTRACT 1: local rules use its zone)."""
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, ZoneInfo(cfg.gateway.timezone)).strftime(
        "%Y-%m-%d %H:%M:%S")


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
        f"msg(s) + {backlog.get('pending', 0)} item(s) not yet formed, oldest "
        f"{backlog['oldest_age_s'] or 0}s",
    ]
    disk = data.get("disk") or {}
    if disk:
        mib = 1024 * 1024
        lines.append(f"disk    {'FULL: degraded' if disk['mode'] == 'degraded' else 'ok'}"
                     f"  free {disk['free_bytes'] / mib:.1f} MiB  reserve "
                     f"{disk['reserve_bytes'] / mib:.1f} MiB"
                     + (f"  since {_local(disk['since'], cfg)} ({disk['reason']}); see "
                        "docs/technician.md 'A full disk'" if disk["mode"] == "degraded"
                        else ""))
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
            f"entries {acct.n}  (times in {cfg.gateway.timezone})"]
    zone = ZoneInfo(cfg.gateway.timezone)
    for e in entries:  # local time of the gateway; --json keeps Unix seconds (CONTRACT 1)
        when = datetime.fromtimestamp(e.t, zone).strftime("%Y-%m-%d %H:%M:%S")
        text.append(f"  #{e.n:<6} {when} {e.kind:<7} {_paise(e.amt):>11} "
                    f"-> {_paise(e.bal):>11}  {e.ref}")
    _print(data, args.json, "\n".join(text))
    return 0


def cmd_store_init(args: argparse.Namespace) -> int:
    """A new, empty store in the place of a lost one, numbering on from where the lost
    one stopped: the head-end tells the last seq and boot it saw from the gateway
    (docs/technician.md, 'Recovering a broken store')."""
    from agent.buffer.store import DB_NAME, Store

    cfg = _config(args.config)
    path = Path(cfg.gateway.data_dir) / DB_NAME
    if path.exists():
        raise UsageError(f"store {path} exists: move it (and its -wal, -shm) aside first")
    if args.after_seq < 0 or args.after_boot < 0:
        raise UsageError("--after-seq and --after-boot must be >= 0")
    store = Store(cfg.gateway.data_dir)
    try:
        store.start_after(args.after_seq, args.after_boot)
    finally:
        store.close()
    data = {"store": str(path), "first_seq": args.after_seq + 1,
            "first_boot": args.after_boot + 1}
    _print(data, args.json, f"new store {path}: its first message will be seq "
           f"{args.after_seq + 1}, its first start boot {args.after_boot + 1}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo drives the simulator, which a board's package does not carry: it is
    found in the source checkout this agent runs from (``pip install -e .``)."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "sim" / "demo.py").exists() and str(checkout) not in sys.path:
        sys.path.append(str(checkout))
    try:
        from sim.demo import run_demo
    except ModuleNotFoundError as exc:
        if exc.name not in ("sim", "sim.demo"):
            raise
        raise UsageError("the demo needs the simulator, which is not installed with the "
                         "agent: run it from a source checkout (make demo)") from None
    return run_demo(args.config, duration_s=args.duration)


def _agent(cfg: Config, op: str, call_args: dict[str, Any]) -> dict[str, Any]:
    from agent.control import ControlError, call

    try:
        return call(cfg.gateway.data_dir, op, call_args)
    except ControlError as exc:
        raise UsageError(str(exc)) from exc


def cmd_relay(args: argparse.Namespace) -> int:
    cfg = _config(args.config)
    result = _agent(cfg, "relay", {"meter": args.meter, "action": args.action,
                                   "until": args.until})
    _print(result, args.json, f"{args.meter}: {args.action} (relay intent now "
           f"{result['state']}); logged and reported to the head-end")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    cfg = _config(args.config)
    if args.action == "enter":
        digits = "".join(args.values)
        result = _agent(cfg, "token_enter", {"account": args.account, "digits": digits})
        if not result.get("ok"):
            raise UsageError(f"token refused: {result.get('reason', 'rejected')}")
        _print(result, args.json, f"accepted: {_paise(result['amount'])} credited to "
               f"{args.account}; balance {_paise(result['balance'])}")
        return 0
    return _token_issue(cfg, args)


def _token_issue(cfg: Config, args: argparse.Namespace) -> int:
    """The reference issuer (CONTRACT 8): what a vending counter runs with the token key."""
    from agent.ledger.tokens import issue_token
    from agent.uplink.cose import read_hex_key

    if args.account not in {a.id for a in cfg.accounts}:  # a token for no one is money lost
        raise UsageError(f"no account {args.account!r} in {cfg.source} (accounts: "
                         f"{', '.join(a.id for a in cfg.accounts) or 'none'})")
    if len(args.values) != 1 or not args.values[0].isdigit():
        raise UsageError("token issue ACCOUNT AMOUNT: AMOUNT is paise, a whole number")
    amount = int(args.values[0])
    if amount <= 0 or amount % 100:
        raise UsageError("AMOUNT must be a positive multiple of 100 paise (tokens carry "
                         "whole rupees)")
    key = read_hex_key(cfg.security.token_key_file)
    counter = args.counter if args.counter is not None else _next_counter(cfg, args.account)
    try:
        token = issue_token(key, args.account, amount, counter)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    _print({"account": args.account, "amount": amount, "counter": counter, "token": token},
           args.json, token)
    return 0


def _next_counter(cfg: Config, account: str) -> int:
    """The issuer's per-account counter, kept beside the token key (0600, atomic update)."""
    path = Path(str(cfg.security.token_key_file) + ".issued.json")
    try:
        counters: dict[str, int] = json.loads(path.read_text())
    except FileNotFoundError:
        counters = {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the issuer's counters {path}: {exc}") from exc
    counter = counters.get(account, 0) + 1  # counters start at 1 (docs/tokens.md)
    counters[account] = counter
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(counters, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return counter


def cmd_scan(args: argparse.Namespace) -> int:
    """Find meters on a bus: through the running agent (it owns the port), else directly."""
    from agent.control import SOCKET_NAME

    cfg = _config(args.config)
    try:
        bus = cfg.bus(args.bus)
    except KeyError:
        raise UsageError(f"no bus {args.bus!r} in {args.config} (buses: "
                         f"{', '.join(b.name for b in cfg.buses)})") from None
    addresses = _address_range(args.addresses)
    configured = {(m.bus, m.address): m.id for m in cfg.meters}
    for m in cfg.meters:  # a Modbus relay module answers a scan too: name what it switches
        if m.relay_spec.kind == "modbus-coil" and m.relay_spec.unit is not None:
            key = (m.bus, m.relay_spec.unit)
            configured[key] = (configured.get(key, "relay module for") + f" {m.id}")
    if (Path(cfg.gateway.data_dir) / SOCKET_NAME).exists():
        print(f"scanning {bus.name} through the running agent (addresses {args.addresses}) ...",
              file=sys.stderr)
        found = _agent(cfg, "scan", {"bus": bus.name, "addresses": addresses}).get("found", [])
    else:
        found = [{"address": f.address, "protocol": f.protocol, "serial": f.serial,
                  "meter": configured.get((bus.name, f.address))}
                 for f in _scan_directly(bus, addresses)]
    for f in found:
        f["meter"] = f.get("meter") or configured.get((bus.name, f["address"]))
    data = {"bus": bus.name, "protocol": bus.protocol, "found": found}
    lines = [f"{len(found)} meter(s) on {bus.name} ({bus.protocol}):"]
    for f in found:
        known = f.get("meter") or "NOT CONFIGURED"
        lines.append(f"  address {f['address']:>3}  serial {f['serial'] or '?':<14} {known}")
    _print(data, args.json, "\n".join(lines))
    return 0


def _address_range(text: str) -> list[int]:
    """``"1-247"``, ``"5"`` or ``"1-10,20"`` into addresses, each 1..247."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UsageError(f"--addresses {text!r}: use e.g. 1-247 or 1-10,20") from None
    if not out or min(out) < 1 or max(out) > 247:
        raise UsageError(f"--addresses {text!r}: addresses are 1..247")
    return sorted(set(out))


def _scan_directly(bus: Any, addresses: list[int]) -> list[Any]:
    from agent.drivers.bus import default_transport
    from agent.drivers.scan import scan_bus

    try:
        transport = default_transport(bus)
    except AgentError as exc:
        raise UsageError(f"cannot open {bus.port}: {exc}") from exc
    hits = 0
    last = addresses[-1]

    def progress(address: int, found: Any) -> None:
        nonlocal hits
        hits += found is not None
        if sys.stderr.isatty() or address % 50 == 0 or address == last:
            end = "\r" if sys.stderr.isatty() and address < last else "\n"
            print(f"scanning {bus.name}: address {address} of {addresses[0]}..{last}, "
                  f"found {hits}", end=end, file=sys.stderr, flush=True)

    try:
        return list(scan_bus(transport, bus.protocol, addresses, progress=progress))
    finally:
        transport.close()


# -- parser ------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config",
                        default=os.environ.get("METER_AGENT_CONFIG", DEFAULT_CONFIG),
                        help=f"board config (default: {DEFAULT_CONFIG})")
    common.add_argument("--json", action="store_true", help="print data as JSON")
    common.add_argument("--log-level", default="INFO", choices=LEVELS)
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
    p = sub.add_parser("relay", parents=[common],
                       help="local relay override through the running agent")
    p.add_argument("meter")
    p.add_argument("action", choices=["connect", "disconnect", "auto"])
    p.add_argument("--until", type=int, default=None, help="Unix seconds; default: until auto")
    p.set_defaults(func=cmd_relay)
    p = sub.add_parser("token", parents=[common], help="offline top-up tokens")
    p.add_argument("action", choices=["enter", "issue"])
    p.add_argument("account")
    p.add_argument("values", nargs="+", metavar="DIGITS|AMOUNT",
                   help="enter: the 20 digits (groups allowed); issue: the amount in paise")
    p.add_argument("--counter", type=int, default=None, help="issue: this token counter")
    p.set_defaults(func=cmd_token)
    p = sub.add_parser("store-init", parents=[common],
                       help="a new store that numbers on after a lost one (agent stopped)")
    p.add_argument("--after-seq", type=int, required=True,
                   help="the last seq the head-end saw from this gateway")
    p.add_argument("--after-boot", type=int, default=0,
                   help="the last boot the head-end saw from this gateway")
    p.set_defaults(func=cmd_store_init)
    p = sub.add_parser("scan", parents=[common], help="find meters on a bus")
    p.add_argument("--bus", required=True)
    p.add_argument("--addresses", default="1-247", help="e.g. 1-247 (default), 1-10,20")
    p.set_defaults(func=cmd_scan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
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
