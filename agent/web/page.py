"""The status page's HTML (CONTRACT 11): one server-rendered page, no JavaScript, no CDN
(the site may have no internet), reloading itself every 5 s. Pure: the status dict and
the clock are passed in.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

STALE_S = 30  # the runtime refreshes its status every 5 s; older than this: a warning
EVENTS_SHOWN = 50  # newest first; older ones are in `journalctl` and on the head-end

# -- the page ----------------------------------------------------------------------
# Everything from the status dict goes through _e() (html.escape, quotes too): meter
# ids, errors and event details are data, never markup. The dict is read defensively
# (a missing or odd field shows "-"), so a status from an older or newer agent still
# renders rather than failing the page.

_CSS = """
body{font:16px/1.4 system-ui,sans-serif;margin:0;padding:.5rem;background:#f4f4f4;color:#111}
h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.05rem;margin:1rem 0 .3rem}
section,.card{background:#fff;border-radius:6px;padding:.5rem .7rem;margin:.4rem 0}
.card{border-left:6px solid #888}.card.on{border-color:#2a7}.card.off{border-color:#c33}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.1rem .8rem;margin:0}
dt{color:#555}dd{margin:0;overflow-wrap:anywhere}
.ok{color:#176;font-weight:600}.bad{color:#b11;font-weight:600}.muted{color:#666}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.15rem .3rem}
tr+tr td{border-top:1px solid #eee}.num{text-align:right;font-variant-numeric:tabular-nums}
h2 small{display:block;font-size:.8rem;font-weight:400;color:#666}
"""


def _e(value: object) -> str:
    return escape("-" if value is None else str(value), quote=True)


def _d(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def rupees(paise: object) -> str:
    """Integer paise as ₹ with Indian digit grouping: 12345678 -> ₹1,23,456.78."""
    p = _int(paise)
    if p is None:
        return "-"
    whole, frac = divmod(abs(p), 100)
    digits = str(whole)
    head, tail = digits[:-3], digits[-3:]
    groups: list[str] = []
    while len(head) > 2:
        groups.insert(0, head[-2:])
        head = head[:-2]
    if head:
        groups.insert(0, head)
    return ("-" if p < 0 else "") + "₹" + ",".join([*groups, tail]) + f".{frac:02d}"


def _fixed(value: object, scale: int, places: int, unit: str) -> str:
    """An integer in 1/scale units as a decimal, without float: 123456, 1000, 3 -> 123.456."""
    v = _int(value)
    if v is None:
        return "-"
    whole, frac = divmod(abs(v), scale)
    text = f"{whole}.{frac * 10**places // scale:0{places}d}" if places else str(whole)
    return ("-" if v < 0 else "") + text + (f" {unit}" if unit else "")


def _utc(t: object) -> str:
    s = _int(t)
    return "-" if s is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s))


def _age(t: object, now: object) -> str:
    a, b = _int(t), _int(now)
    if a is None or b is None:
        return "-"
    s = max(0, b - a)
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def _flag(value: object, yes: str, no: str) -> str:
    if value is True:
        return f'<span class="ok">{_e(yes)}</span>'
    if value is False:
        return f'<span class="bad">{_e(no)}</span>'
    return '<span class="muted">unknown</span>'


def _dl(rows: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


_READING_FIELDS = (("import_wh", "import", 1000, 3, "kWh"), ("export_wh", "export", 1000, 3,
                   "kWh"), ("p_w", "power", 1, 0, "W"), ("v_dv", "voltage", 10, 1, "V"),
                   ("i_ma", "current", 1000, 3, "A"), ("f_chz", "frequency", 100, 2, "Hz"),
                   ("pf_milli", "power factor", 1000, 3, ""))


def _meter(m: dict[str, Any], now: object) -> str:
    relay = _d(m.get("relay"))
    reading = _d(m.get("reading"))
    state = "on" if m.get("online") is True else "off" if m.get("online") is False else ""
    rows = [("online", _flag(m.get("online"), "yes", "NO")),
            ("account", _e(m.get("account"))),
            ("balance", f'<b>{_e(rupees(m.get("balance")))}</b>'),
            ("relay", f'<b>{_e(relay.get("actual") or "unknown")}</b>'
                      + (f' (wanted {_e(relay.get("intent"))})'
                         if relay.get("intent") not in (None, relay.get("actual")) else "")
                      + (f' <span class="muted">{_e(relay.get("reason"))}</span>'
                         if relay.get("reason") else "")),
            ("read", _e(_age(reading.get("t"), now)))]
    rows += [(label, _e(_fixed(reading[key], scale, places, unit)))
             for key, label, scale, places, unit in _READING_FIELDS if key in reading]
    counters = _d(m.get("errors"))
    if "polls" in counters:
        rows.append(("polls", _e(f"{counters.get('ok', '-')} ok of {counters['polls']}")))
    problems = {k: v for k, v in counters.items() if v and k not in ("polls", "ok")}
    if problems:
        rows.append(("problems", '<span class="bad">' + _e(", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in sorted(problems.items()))) + "</span>"))
    return (f'<div class="card {state}"><h2>{_e(m.get("id"))} <small>'
            f'{_e(m.get("model"))} · {_e(m.get("bus"))} #{_e(m.get("address"))}</small></h2>'
            + _dl(rows) + "</div>")


def _event(ev: object) -> str:
    d = _d(ev)
    who = " ".join(_e(d[k]) for k in ("m", "acct") if d.get(k))
    detail = ", ".join(f"{k}={v}" for k, v in sorted(_d(d.get("detail")).items()))
    return (f'<tr><td>{_e(_utc(d.get("t")))}</td><td><b>{_e(d.get("type"))}</b> {who}'
            f'<br><span class="muted">{_e(detail)}</span></td></tr>')


def render_page(status: dict[str, Any], now_s: int | None = None) -> str:
    """The whole HTML page for one status dict (pure: the clock is passed in)."""
    now = status.get("time")
    fresh = _e(_utc(now))
    status_s = _int(now)
    if now_s is not None and status_s is not None:
        age_s = now_s - status_s
        fresh += (f' <span class="bad">{age_s} s old: the agent is not updating it</span>'
                  if age_s > STALE_S else f" ({max(0, age_s)} s ago)")
    link, headend, backlog = (_d(status.get(k)) for k in ("link", "headend", "backlog"))
    disk = _d(status.get("disk"))
    running = status.get("running", True)
    parts = [
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta http-equiv="refresh" content="5">',
        f"<title>{_e(status.get('gateway'))} · meter-agent</title><style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{_e(status.get('gateway'))}</h1>",
        _dl([("agent", f"meter-agent {_e(status.get('version'))} · boot {_e(status.get('boot'))}"
                       f" · {_flag(running, 'running', 'NOT RUNNING')}"),
             ("status at", fresh),
             ("clock", _flag(status.get("clock_trusted"), "trusted", "NOT TRUSTED")),
             ("disk", _flag(disk.get("mode", "normal") == "normal", "ok",
                            "FULL: degraded (readings may be dropped)")
              + f" · {_e((_int(disk.get('free_bytes')) or 0) // 1024)} KiB free")]),
        "<section><h2>Link</h2>",
        _dl([("broker", f"{_flag(link.get('connected'), 'connected', 'DOWN')} "
                        f"{_e(link.get('host'))}:{_e(link.get('port'))}"),
             ("reconnects", _e(link.get("reconnects"))),
             ("in flight", _e(link.get("inflight"))),
             ("head-end", _flag(headend.get("online"), "online", "offline")),
             ("payments", _flag(headend.get("payments"), "up", "DOWN")),
             ("backlog", f"{_e(backlog.get('messages'))} message(s) + "
                         f"{_e(backlog.get('pending', 0))} item(s) not yet formed, oldest "
                         f"{_e(backlog.get('oldest_age_s') or 0)} s, "
                         f"{_e(backlog.get('bytes'))} bytes")]),
        "</section><section><h2>Buses</h2>",
    ]
    for bus in status.get("buses") or []:
        b = _d(bus)
        error = f' <span class="bad">{_e(b["error"])}</span>' if b.get("error") else \
            ' <span class="ok">ok</span>'
        parts.append(f"<div><b>{_e(b.get('name'))}</b> {_e(b.get('protocol'))} on "
                     f"<code>{_e(b.get('port'))}</code>{error}</div>")
    parts.append("</section><h2>Meters</h2>")
    parts += [_meter(_d(m), now) for m in status.get("meters") or []]
    parts.append("<section><h2>Accounts</h2><table>")
    for acct in status.get("accounts") or []:
        a = _d(acct)
        parts.append(f'<tr><td>{_e(a.get("id"))}</td>'
                     f'<td class="num">{_e(rupees(a.get("balance")))}</td></tr>')
    parts.append("</table></section>")
    events = status.get("events")
    if isinstance(events, list):
        parts.append("<section><h2>Recent events</h2><table>")
        parts += [_event(ev) for ev in events[-EVENTS_SHOWN:][::-1]] or \
            ['<tr><td class="muted">none</td></tr>']
        parts.append("</table></section>")
    parts.append("</body></html>\n")
    return "".join(parts)
