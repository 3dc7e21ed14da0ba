"""The prose of bench/results/peer.md that depends on the run: the set-up (what ran,
configured how) and the notes on where the agent spends more, each figure in them taken
from the results."""

from __future__ import annotations

from bench.peer import agent_side, tbgw
from bench.peer.report import Results, med


def setup(r: Results, unchanged: bool, stub_answers: int, resent: int,
           failures: list[str]) -> str:
    """The set-up paragraph: what ran, configured how."""
    a = r.args
    lines = [
        "## Set-up",
        "",
        "- **Broker**: one private mosquitto on a free loopback port for the whole run "
        "(persistence on, anonymous). A counter subscribed to `#` at QoS 1 with a "
        "persistent session takes the arrival time and size of every delivery; retained "
        "replays are left out, and so are the broker's resends to the counter itself after "
        f"a restart (DUP set, bytes it already had: {resent} in this run).",
        "- **Meters**: `python -m sim.meters -c board.toml`, Eastron SDM120 register maps, "
        f"{a['meters']} meters on {a['buses']} buses at {a['baud']:,} baud; the board config "
        "is the agent's own TOML, and the peer's config is generated from the same file. "
        "Each run starts its own simulator (a pty has one master at a time: the sides never "
        "run together).",
        "- **Agent**: `python -m agent.cli run -c board.toml --log-level WARNING` from the "
        "project's venv; store in the run's directory; accounts at zero balance, no relays "
        "(as bench/uplink_rss.py). It reads an SDM120 in 2 requests (32 + 6 registers, "
        "`plan_reads`).",
        f"- **Peer**: thingsboard-gateway {tbgw.VERSION} in its own venv "
        f"(`var/peer/tb-{tbgw.VERSION}/venv`: {', '.join(f'`{p}`' for p in tbgw.PINS)} and "
        "what pip resolved for them), run as `python -m thingsboard_gateway.tb_gateway` "
        "with `TB_GW_CONFIG_DIR` in the run's directory. Its shipped `tb_gateway.json` "
        "with: the broker's host/port, an access token as MQTT username, "
        "`remoteConfiguration` off, the report strategy written out as `ON_RECEIVED`, one "
        "Modbus connector per bus, loggers at WARNING. **Report strategy**: `ON_RECEIVED` "
        "is the shipped default (tb_gateway.json and the code's "
        "DEFAULT_REPORT_STRATEGY_CONFIG): every poll is sent, changed or not, so \"as "
        "configured for every poll\" and \"as shipped\" are one measurement here. Kept "
        "as shipped: **memory storage** (not durable: a restart loses what is not sent), "
        "statistics to `v1/devices/me/telemetry` every 60 s, QoS 1, MQTT 5. Each meter: a "
        "serial RTU slave, `pollPeriod` = the bus's interval, timeout 0.5 s, 1 retry, one "
        "`32float` timeseries entry per quantity (same registers, keys named as the "
        "agent's quantities, `round` to the agent's resolution). Its connector reads "
        "**one request per entry: 7 requests per meter per poll**, 3.5× the agent's.",
        f"- **ThingsBoard stub**: a gateway session waits for the server's answer to its "
        "`getSessionLimits` RPC before it sends anything; a stub answers as a self-hosted "
        "ThingsBoard CE with its default tenant profile would (no rate limits, 64 KiB, 100 "
        f"in flight): {stub_answers} answers in this run, not counted as uplink.",
        "- **Network**: loopback only. The gateway's updater posts to its vendor at start "
        "and hourly (no setting turns it off); HTTP(S)_PROXY points it at a closed loopback "
        "port, so it fails at once.",
        "- **Nothing installed at run time**: the peer venv's distributions were "
        + ("the same before and after the runs." if unchanged
           else "**different** after the runs (the gateway installed something)."),
        "- **Why a " + f"{a['live_poll']:g}" + " s poll gives the 15-minute figure**: both "
        "sides poll every meter back to back at the start of a cycle and send a cycle's "
        "readings within seconds of it (the agent: "
        + ("in the table form, one message when every meter has been read, within "
           "TABLE_LINGER_S" if a.get("agent_live", "series") == "table" else
           "in series, what was read within LIVE_FLUSH_S = 5 s shares a message")
        + "; the peer: one message per device and poll), so how readings "
        "are grouped into messages depends on how long a cycle takes on the bus, not on "
        "the interval, once the interval is longer than a cycle plus that window. The "
        "framing check in table 1 confirms it for every message of every run, and the "
        "cross-check row measures the same at a longer interval. That holds for what is "
        "sent because of readings; what a side sends by the clock (the agent's health "
        "report, the peer's statistics, each every 60 s) is shared by fewer readings the "
        "longer the interval, so the 15-minute total adds it at its period: its size "
        "measured, its period the configured one.",
    ]
    if failures:
        lines += ["", "**Runs that failed** (left out of the figures):", ""]
        lines += [f"- {f.splitlines()[0]}" for f in failures]
    return "\n".join(lines)


def _key_bytes() -> tuple[int, int]:
    """(bytes of the map keys, bytes) of one series holding one SDM120 reading, as the
    agent encodes it: what a live series spends on names."""
    from agent.drivers.reading import Reading
    from agent.uplink import cbor, wire

    values = {"import_wh": 3_281_672, "export_wh": 0, "p_w": 1709, "v_dv": 2296,
              "i_ma": 6954, "f_chz": 4997, "pf_milli": 946}
    series = wire.readings_body([Reading("SDM-0000", 1_796_221_003, values)])[0]
    return sum(len(cbor.dumps(k)) for k in series), len(cbor.dumps(series))


def notes(r: Results) -> list[str]:
    """Where the agent spends more than the peer, with the figures of this run."""
    from agent.uplink.forming import LIVE_FLUSH_S

    la, lp = r.live["agent"], r.live["peer"]
    ga, gp = r.load["agent"], r.load["peer"]
    if not (la and lp and ga and gp):
        return []
    meters = r.args["meters"]
    report_b = med([x.steady_report() for x in la])
    per15 = report_b * 900 / agent_side.PERIOD_S / meters
    ledger = med([x.by_topic.get(f"{agent_side.PREFIX}/{{gw}}/up/ledger", 0)
                   / max(1, x.readings) for x in la])
    keys, series = _key_bytes()
    total15 = med([x.at_interval(meters, 900.0) for x in la])
    live = med([x.per_reading for x in la])
    driven = med([x.per_reading_driven for x in la])
    peer_b = med([x.per_reading for x in lp])

    def share(part: float, whole: float) -> str:
        return "most" if part > whole / 2 else f"{100 * part / max(whole, 1e-9):.0f} %"

    return [
        "## Reading the figures: where the agent spends more",
        "",
        f"- **Clock-driven health report**: the agent's `state` is "
        f"{report_b:,.0f} B every {agent_side.PERIOD_S:g} s with {meters} meters (it "
        "names only meters offline or failing since the last report); at 15-minute "
        "polls that is "
        f"{per15:,.0f} B per reading, {share(per15, total15)} of the agent's "
        f"{total15:,.0f} B. The peer's "
        f"statistics: {med([x.steady_report() for x in lp]):,.0f} B a minute (gateway, "
        "service and connector counters: nothing per device).",
        f"- **Ledger journal**: {ledger:.1f} B per reading on `up/ledger` (an `energy` "
        f"entry a reading), {ledger / max(live, 1e-9):.1f}× the reading itself "
        f"({live:.1f} B); the peer keeps no ledger, so readings + journal "
        f"({driven:.1f} B) is {'more' if driven > peer_b else 'less'} than the peer's "
        f"{peer_b:.1f} B.",
        *([f"- **Names in live series**: a live series of one reading is {series} B, "
           f"{keys} B of it map keys (`m`, `t` and the seven quantity names), repeated for "
           "every meter of a message; delta encoding pays only within a meter's series "
           "(`--agent-live table` sends one table a poll cycle instead).",
           f"- **Start-up**: the agent's first readings wait LIVE_FLUSH_S = {LIVE_FLUSH_S} s "
           "to share a message (uplink/forming.py), so its first reading message comes about "
           f"{LIVE_FLUSH_S} s after its first poll; the peer sends a poll's values within "
           "about 0.1 s (its converter batches for 0.1 s, its sender waits "
           "`minPackSendDelayMS`, 50 ms)."] if r.args.get("agent_live", "series") == "series"
          else ["- **Live readings in the table form** (`[mqtt] live_readings = \"table\"`, "
                "docs/mqtt-api.md): one message a poll cycle with every meter's reading, "
                "names once per message; it goes when every meter due has been read, so "
                "the first reading message of a start comes one bus cycle after the first "
                "poll."]),
        "- Where the peer spends more: 7 Modbus requests per meter and poll (the agent 2), "
        f"so it delivered {med([x.readings / x.window_s for x in gp]):.1f} of the "
        f"{meters / r.args['load_poll']:.0f} readings/s polled; its CPU per reading, "
        "reconnect time, disk, dependencies and memory are all above the agent's.",
    ]
