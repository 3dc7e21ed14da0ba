"""The report of a run: facts per gateway, totals, and the text and JSON forms.

Everything in the JSON is an integer, a string or a list/map of them, computed from
the simulation alone, so two runs of one seed write the same bytes. Wall-clock
speed is printed with the text report, never put in the JSON.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from sim.neighbourhood.plan import PROTOCOLS
from sim.neighbourhood.world import DAY_S, HOUR_S, WS_PER_WH

if TYPE_CHECKING:
    from sim.neighbourhood import RunResult
    from sim.neighbourhood.runner import GatewaySim


def _pct(values: list[int], q: int) -> int:
    if not values:
        return 0
    s = sorted(values)
    return s[min(len(s) - 1, (len(s) * q) // 100)]


def _spread(values: list[int]) -> dict[str, int]:
    return {"n": len(values), "p50": _pct(values, 50), "p95": _pct(values, 95),
            "max": max(values, default=0)}


SAMPLES = ("reconnect_s", "latency_s")  # raw lists kept per gateway for the totals' spreads
MAXED = ("longest_s", "store_peak_bytes", "final_balance_max")
MINNED = ("final_balance_min",)


def gateway_facts(sim: GatewaySim, found: dict[str, Any]
                  ) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[int]]]:
    """(facts for the JSON, the plot series, raw samples for the totals)."""
    got = sim.headend.got
    rows = found["entries"]
    rep = found["replay"]
    debits: Counter[str] = Counter()
    for _a, _n, _t, kind, amt, _b, _r in rows:
        debits[kind] += amt
    balances = [bal for (bal,) in sim.final_conn().execute("SELECT balance FROM accounts")]
    events = Counter(str(e.get("type")) for _t, _b, e in sim.obs.events)
    first_reason: Counter[str] = Counter()
    every_reason: Counter[str] = Counter()
    for _t, _b, e in sim.obs.events:
        if e.get("type") == "disconnect_deferred":
            detail = e.get("detail", {})
            first_reason[str(detail.get("reason"))] += 1
            every_reason.update(str(r) for r in detail.get("reasons", []))
    ran_out: Counter[str] = Counter()  # when credit ran out (credit_exhausted), true time
    for t, _b, e in sim.obs.events:
        if e.get("type") == "credit_exhausted":
            ran_out[sim.cal.protection(t) or "working_hours"] += 1
    opens = sim.judge.opens
    by_rule = Counter(("illegal" if d.broken else d.allowed_by.split(":")[0]) for d in opens)
    local_hours = Counter(sim.cal.local(d.t).hour for d in opens)
    outages = [f for f in sim.faults if f.kind == "outage"]
    crashes = Counter(how.split(":")[0] for _t, _b, _p, how in sim.life.crashes)
    points = Counter(point for _t, _b, point, _h in sim.life.crashes)
    tokens = Counter(("ok" if a.get("ok") and a.get("result", {}).get("ok") else
                      str(a.get("result", {}).get("reason", a.get("error", "?"))))
                     for _t, _a, _d, _n, a in sim.token_results)
    reconnect_s = [close - credit for _m, credit, close in sim.judge.reconnections]
    facts: dict[str, Any] = {
        "households": len(sim.households),
        "energy_wh": {
            "drawn": sum(hh.used_ws for hh in sim.households) // WS_PER_WH,
            "registered": sum(hh.registered_ws for hh in sim.households) // WS_PER_WH,
            "charged": sum(rep.meter_charged.values()),
            "metered_between_first_and_last_reading": sum(rep.meter_truth.values()),
            "unbilled": dict(sorted(rep.unbilled.items())),
            "not_drawn_while_cut": sum(hh.open_ws for hh in sim.households) // WS_PER_WH,
        },
        "money_paise": {
            "cloud_topups": sum(a for _x, a, _t in sim.consumers.ledger.cloud.values()),
            "tokens_bought": sum(t[3] for t in sim.consumers.ledger.tokens),
            "debits": {k: -v for k, v in sorted(debits.items()) if v < 0},
            "credits": {k: v for k, v in sorted(debits.items()) if v > 0},
            "final_balance_min": min(balances, default=0),
            "final_balance_max": max(balances, default=0),
            "accounts_in_debt_at_end": sum(1 for b in balances if b < 0),
        },
        "disconnections": {"total": len(opens), "by_rule": dict(sorted(by_rule.items())),
                           "by_local_hour": {str(h): n for h, n in sorted(local_hours.items())},
                           "reconnections": _spread(reconnect_s)},
        "credit_ran_out": dict(sorted(ran_out.items())),
        "deferrals": {"events": sum(first_reason.values()),
                      "by_first_reason": dict(sorted(first_reason.items())),
                      "by_every_reason": dict(sorted(every_reason.items()))},
        "outages": {
            "broker": {"count": len(outages), "seconds": sum(f.end - f.t for f in outages),
                       "longest_s": max((f.end - f.t for f in outages), default=0)},
            "link_reconnects": sum(1 for _t, k in sim.link_log if k == "connected") - 1,
            "agent_crashes": dict(sorted(crashes.items())),
            "crash_points": dict(sorted(points.items())),
            "agent_down_s": sum(b - a for a, b in sim.life.downtime),
            "meters_silent": sum(1 for f in sim.faults if f.kind in ("silent", "replace")),
            "meters_corrupt": sum(1 for f in sim.faults if f.kind == "corrupt"),
            "register_faults": sum(1 for f in sim.faults if f.kind in ("reset", "replace")),
            "tamper_reported": len(sim.posted_tampers),
        },
        "delivery": {"messages": got.messages, "bytes": got.bytes,
                     "duplicates": got.duplicates, "readings_served": len(sim.served),
                     "readings_committed": len(sim.obs.readings),
                     "readings_delivered": len(got.readings),
                     "reading_latency_s": _spread(found["delivery"])},
        "tokens": dict(sorted(tokens.items())),
        "events": dict(sorted(events.items())),
        "steps": sim.steps,
        "store_peak_bytes": sim.disk_peak,
    }
    samples = {"reconnect_s": reconnect_s, "latency_s": list(found["delivery"])}
    return facts, _plot_series(sim), samples


def _plot_series(sim: GatewaySim) -> dict[str, Any]:
    """The household with the most disconnections (then the lowest index)."""
    opens = Counter(m for _t, m, c in sim.coil_log if not c)
    meter = min(sim.by_meter, key=lambda m: (-opens[m], m))
    acct = sim.account_of[meter]
    balance = [(e.true_t, e.bal) for e in sim.obs.entries if e.acct == acct]
    relay = [(t, c) for t, m, c in sim.coil_log if m == meter]
    return {"meter": meter, "account": acct, "opens": opens[meter], "balance": balance,
            "relay": relay, "start": sim.plan.start_s, "end": sim.plan.end_s}


def build(result: RunResult) -> dict[str, Any]:
    o, plan = result.options, result.plan
    totals: dict[str, Any] = {}
    for g in result.gateways:
        _add(totals, g.facts)
    merged = {k: [v for g in result.gateways for v in g.samples[k]] for k in SAMPLES}
    totals["disconnections"]["reconnections"] = _spread(merged["reconnect_s"])
    totals["delivery"]["reading_latency_s"] = _spread(merged["latency_s"])
    report: dict[str, Any] = {
        "seed": o.seed, "meters": o.meters, "days": o.days, "poll_s": plan.poll_s,
        "mode": o.mode, "plant": o.plant, "start_s": plan.start_s,
        "policy": {"emergency_credit": plan.emergency_credit,
                   "max_disconnects_per_hour": plan.max_disconnects_per_hour,
                   "store_max_bytes": plan.store_max_bytes},
        "headend": {"payments_down_s": sum(f.end - f.t for f in plan.headend
                                           if f.kind == "payments_down"),
                    "offline_s": sum(f.end - f.t for f in plan.headend
                                     if f.kind == "headend_offline"),
                    "moratoria": sum(1 for f in plan.headend if f.kind == "moratorium")},
        "totals": totals,
        "gateways": {g.id: g.facts for g in result.gateways},
        "message_sha256": {g.id: g.message_sha256 for g in result.gateways},
        "violations": result.violations,
        "replay": o.replay_command(),
    }
    if o.protocols != "modbus":  # a key of its own only then: the Modbus report is unchanged
        report["protocols"] = list(PROTOCOLS[o.protocols])
    return report


def _add(into: dict[str, Any], facts: dict[str, Any]) -> None:
    """Totals: counts add up, extremes are extremes; spreads are recomputed (build)."""
    for key, value in facts.items():
        if isinstance(value, dict):
            _add(into.setdefault(key, {}), value)
        elif not isinstance(value, int) or key in ("p50", "p95", "max", "n"):
            continue
        elif key in MAXED:
            into[key] = max(into.get(key, value), value)
        elif key in MINNED:
            into[key] = min(into.get(key, value), value)
        else:
            into[key] = into.get(key, 0) + value


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=1, sort_keys=True) + "\n"


def to_text(report: dict[str, Any], result: RunResult) -> str:
    t = report["totals"]
    e, m = t["energy_wh"], t["money_paise"]
    d, o = t["disconnections"], t["outages"]
    lines = [
        f"neighbourhood seed {report['seed']}: {report['meters']} meters, {report['days']} days "
        f"from {_date(result)}, poll {report['poll_s'] // 60} min, {report['mode']} "
        + (f"buses ({', '.join(report['protocols'])})" if "protocols" in report else "bus")
        + (f", planted bug {report['plant']!r}" if report["plant"] else ""),
        f"  energy   drawn {e['drawn'] // 1000} kWh, charged {e['charged'] // 1000} kWh, "
        f"unbilled {sum(e['unbilled'].values())} Wh {e['unbilled']}",
        f"  money    top-ups Rs {m['cloud_topups'] // 100} by app, Rs {m['tokens_bought'] // 100}"
        f" by token; debits {_rs(m['debits'])}; {m['accounts_in_debt_at_end']} in debt at end",
        f"  relays   {d['total']} disconnections {d['by_rule']}, reconnection p50 "
        f"{d['reconnections']['p50']} s max {d['reconnections']['max']} s",
        f"  deferred {t['deferrals']['by_first_reason']}",
        f"  ran out  {t.get('credit_ran_out', {})} (emergency credit used up, by true time)",
        f"  outages  broker {o['broker']['count']} ({o['broker']['seconds'] // HOUR_S} h, "
        f"longest {o['broker']['longest_s'] // HOUR_S} h), head-end payments down "
        f"{report['headend']['payments_down_s'] // HOUR_S} h, crashes {o['agent_crashes']} "
        f"at {o['crash_points']}",
        f"  delivery {t['delivery']['messages']} messages, {t['delivery']['duplicates']} "
        f"duplicates, {t['delivery']['readings_delivered']} readings, latency p50 "
        f"{t['delivery']['reading_latency_s']['p50']} s p95 "
        f"{t['delivery']['reading_latency_s']['p95']} s",
    ]
    meter_days = report["meters"] * report["days"]
    lines.append(f"  speed    {result.wall_s:.1f} s wall, "
                 f"{meter_days / max(result.wall_s, 1e-9):.0f} meter-days/s "
                 f"({sum(g.readings for g in result.gateways)} readings)")
    if report["violations"]:
        lines.append(f"FAILED seed {report['seed']}: {len(report['violations'])} violations")
        lines += ["  " + v for v in report["violations"][:40]]
        lines.append(f"replay: {report['replay']}")
    else:
        lines.append("all checks passed")
    return "\n".join(lines) + "\n"


def _rs(paise: dict[str, int]) -> str:
    return ", ".join(f"{k} Rs {v // 100}" for k, v in paise.items())


def _date(result: RunResult) -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from sim.neighbourhood.world import TIMEZONE

    start = datetime.fromtimestamp(result.plan.start_s, ZoneInfo(TIMEZONE))
    return start.strftime("%a %Y-%m-%d") + f" ({result.plan.days * DAY_S // DAY_S} days)"
