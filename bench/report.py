#!/usr/bin/env python3
"""Render bench.py's results (JSON) as Markdown. Also usable alone: report.py RESULTS.json"""

from __future__ import annotations

import json
import statistics
import sys

CONTENDERS = ("direct", "haproxy", "porthole-src", "porthole-bin")
NAMES = {"direct": "direct", "haproxy": "HAProxy", "porthole-src": "porthole (src)",
         "porthole-bin": "porthole (bin)"}
PORTHOLES = ("porthole-src", "porthole-bin")


def median_of(runs: list, getter):
    values = [getter(r) for r in runs]
    return statistics.median(values) if values else None


def throughput(sc: dict, contender: str):
    runs = sc["runs"].get(contender)
    if not runs:
        return None
    key = "mbps" if sc["unit"] == "MB/s" else "rps"
    return median_of(runs, lambda r: r[key])


def latency(sc: dict, contender: str, p: str):
    runs = sc["runs"].get(contender)
    if not runs:
        return None
    return median_of(runs, lambda r: r["latency_us"][p])


def fmt(value, digits=0) -> str:
    if value is None:
        return "—"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio(a, b) -> str:
    if a is None or b in (None, 0):
        return "—"
    return f"{a / b:.2f}x"


def us(value) -> str:
    return "—" if value is None else f"{value:,.0f}"


def ms(value_us) -> str:
    return "—" if value_us is None else f"{value_us / 1000:.2f}"


def mib(kb) -> str:
    return "—" if kb is None else f"{kb / 1024:.1f}"


def peak(entry: dict, field: str):
    values = [entry[k][field] for k in ("with_watchers", "after_events") if k in entry]
    return max(values) if values else None


def cpu_per_request(sc: dict, contender: str):
    """Median over rounds of the proxy's CPU time (user+sys) per request served, in us."""
    runs = sc["runs"].get(contender) or []
    values = [r["proxy_cpu_s"] / r["requests"] * 1e6 for r in runs if r.get("requests") and "proxy_cpu_s" in r]
    return statistics.median(values) if values else None


def targets(results: dict) -> list[tuple]:
    """(target, threshold, {contender: (measured text, met bool or None)})"""
    sc = results.get("scenarios", {})
    ev = results.get("events", {}).get("contenders", {})
    rows = []

    def each(fn):
        out = {}
        for c in PORTHOLES:
            try:
                out[c] = fn(c)
            except (KeyError, TypeError, ZeroDivisionError):
                out[c] = ("—", None)
        return out

    if "containers" in sc:
        s = sc["containers"]
        rows.append(("/containers/json req/s vs direct", ">= 0.90x", each(lambda c: (
            ratio(throughput(s, c), throughput(s, "direct")),
            throughput(s, c) / throughput(s, "direct") >= 0.9))))
    if "ping-16" in sc:
        s = sc["ping-16"]
        rows.append(("/_ping, 16 conns, req/s vs HAProxy", ">= 0.30x", each(lambda c: (
            ratio(throughput(s, c), throughput(s, "haproxy")),
            throughput(s, c) / throughput(s, "haproxy") >= 0.3))))
    # issue 20, item 4: distinct inspects, redacted (default profile) and not ("redact": [])
    for key, bound in (("ping-16", 2.5), ("list-16", 2.0), ("inspect-distinct-redacted", 3.0),
                       ("inspect-distinct", 2.0)):
        if key in sc:
            s = sc[key]
            what = {"inspect-distinct-redacted": "distinct inspects, default profile",
                    "inspect-distinct": "distinct inspects, \"redact\": []"}.get(key, s["path"])
            rows.append((f"CPU per request, {what}, 16 conns, vs HAProxy", f"<= {bound:.1f}x", each(
                lambda c, s=s, bound=bound: (
                    f"{fmt(cpu_per_request(s, c), 1)} us = {ratio(cpu_per_request(s, c), cpu_per_request(s, 'haproxy'))}",
                    cpu_per_request(s, c) / cpu_per_request(s, "haproxy") <= bound))))
    for key, bound in (("list-16", 1.0), ("inspect-distinct", 0.9)):
        if key in sc:
            s = sc[key]
            what = "same list, 16 clients (coalesced)" if key == "list-16" else "distinct inspects, 16 conns"
            rows.append((f"{what}: req/s vs direct", f">= {bound:.2f}x", each(lambda c, s=s, bound=bound: (
                ratio(throughput(s, c), throughput(s, "direct")),
                throughput(s, c) / throughput(s, "direct") >= bound))))
    if "ping-1" in sc:
        s = sc["ping-1"]
        rows.append(("added p50 latency, /_ping, 1 conn", "<= 150 us", each(lambda c: (
            f"{latency(s, c, 'p50') - latency(s, 'direct', 'p50'):+.0f} us",
            latency(s, c, "p50") - latency(s, "direct", "p50") <= 150))))
    if "large" in sc:
        s = sc["large"]
        rows.append(("large response MB/s vs HAProxy", ">= 0.50x", each(lambda c: (
            ratio(throughput(s, c), throughput(s, "haproxy")),
            throughput(s, c) / throughput(s, "haproxy") >= 0.5))))
    if ev:
        n = results["events"]["watchers"]
        rows.append((f"{n} watchers: total RSS", "<= 60 MiB", each(lambda c: (
            f"{mib(peak(ev[c], 'rss_kb'))} MiB (PSS {mib(peak(ev[c], 'pss_kb'))})",
            peak(ev[c], "rss_kb") <= 60 * 1024))))
        rows.append((f"{n} watchers: event delivery p99, added over direct", "<= 10 ms", each(lambda c: (
            f"{(ev[c]['delay_us']['p99'] - ev['direct']['delay_us']['p99']) / 1000:+.2f} ms",
            ev[c]["delay_us"]["p99"] - ev["direct"]["delay_us"]["p99"] <= 10_000))))
    return rows


def render(results: dict) -> str:
    m = results["machine"]
    cfg = results["config"]
    out = []
    title = "Porthole benchmark" + (" (smoke run: tiny durations, numbers not meaningful)" if cfg["smoke"] else "")
    out.append(f"# {title}\n")
    out.append(f"{results.get('date', '')} on `{m['hostname']}`; {cfg['rounds']} rounds x {cfg['duration_s']} s "
               f"per contender and scenario (interleaved: direct, HAProxy, porthole src, porthole bin, "
               f"repeat), medians shown; the whole run took {results.get('elapsed_s', 0) / 60:.1f} min.\n")

    out.append("## Machine\n")
    out.append("| | |\n| --- | --- |")
    for label, key in (("CPUs (nproc)", "nproc"), ("CPU", "cpu_model"), ("memory", "memory_gib"),
                       ("kernel", "kernel"), ("OS", "os"), ("Python (porthole src)", "python"),
                       ("h11", "h11"), ("HAProxy", "haproxy"), ("wrk", "wrk"), ("nginx (fake upstream)", "nginx"),
                       ("dockerd", "dockerd"), ("porthole", "porthole"), ("dist/porthole sha256", "porthole_bin_sha256")):
        value = m.get(key, "")
        if key == "memory_gib":
            value = f"{value} GiB"
        out.append(f"| {label} | {value} |")
    out.append(f"| load average start / end | {' '.join(m.get('loadavg_start', []))} / "
               f"{' '.join(m.get('loadavg_end', []))} |")
    out.append("")

    sc = results.get("scenarios", {})
    if sc:
        out.append("## Throughput (median)\n")
        out.append("| scenario | unit | direct | HAProxy | porthole (src) | porthole (bin) "
                   "| src / direct | src / HAProxy | bin / direct | bin / HAProxy |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for key, s in sc.items():
            v = {c: throughput(s, c) for c in CONTENDERS}
            digits = 1 if s["unit"] == "MB/s" else 0
            out.append(f"| {s['title']} | {s['unit']} | " + " | ".join(fmt(v[c], digits) for c in CONTENDERS)
                       + f" | {ratio(v['porthole-src'], v['direct'])} | {ratio(v['porthole-src'], v['haproxy'])}"
                       f" | {ratio(v['porthole-bin'], v['direct'])} | {ratio(v['porthole-bin'], v['haproxy'])} |")
        out.append("")
        out.append("Denied requests are answered by the proxy itself, so direct has no figure there (the "
                   "daemon would execute them).\n")

        out.append("## Latency p50 / p99 (us, median over rounds)\n")
        out.append("| scenario | direct | HAProxy | porthole (src) | porthole (bin) | src added p50 | bin added p50 |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for key, s in sc.items():
            cells = []
            for c in CONTENDERS:
                p50, p99 = latency(s, c, "p50"), latency(s, c, "p99")
                cells.append("—" if p50 is None else f"{us(p50)} / {us(p99)}")
            added = []
            for c in PORTHOLES:
                a, b = latency(s, c, "p50"), latency(s, "direct", "p50")
                added.append("—" if a is None or b is None else f"{a - b:+,.0f}")
            out.append(f"| {s['title']} | " + " | ".join(cells) + " | " + " | ".join(added) + " |")
        out.append("")

        out.append("## Proxy CPU per request (median, us of CPU time in the proxy's processes)\n")
        out.append("CPU time (user+sys) of the proxy's whole process tree during a run, over the requests "
                   "it served in that run.\n")
        out.append("| scenario | HAProxy | porthole (src) | porthole (bin) | src / HAProxy | bin / HAProxy |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for key, s in sc.items():
            v = {c: cpu_per_request(s, c) for c in ("haproxy",) + PORTHOLES}
            out.append(f"| {s['title']} | " + " | ".join(fmt(v[c], 1) for c in v)
                       + f" | {ratio(v['porthole-src'], v['haproxy'])} | {ratio(v['porthole-bin'], v['haproxy'])} |")
        out.append("")

        denied = [(k, s) for k, s in sc.items() if s["denied"]]
        if denied:
            out.append("Denials never reached the daemon: API calls in the daemon's debug log during each "
                       "denied run (must be 0): " + "; ".join(
                           f"{s['path']}: " + ", ".join(f"{NAMES[c]} {sum(r.get('daemon_calls', 0) for r in runs)}"
                                                        for c, runs in s["runs"].items())
                           for k, s in denied) + ".\n")

    idle = results.get("idle")
    if idle:
        out.append(f"## Memory with {idle['connections']} idle keep-alive connections\n")
        out.append("RSS of the proxy's process tree before, and with the connections open (each answered one "
                   "`GET /_ping`, then left idle).\n")
        out.append("| contender | RSS MiB before | RSS MiB with connections | kB per connection |")
        out.append("| --- | ---: | ---: | ---: |")
        for c in CONTENDERS:
            e = idle["contenders"].get(c)
            if e:
                out.append(f"| {NAMES[c]} | {mib(e['before']['rss_kb'])} | {mib(e['with_idle']['rss_kb'])} "
                           f"| {fmt(e['per_connection_kb'], 1)} |")
        out.append("")

    ev = results.get("events")
    if ev:
        out.append(f"## /events fan-out: {ev['watchers']} streams, {ev['events']} events\n")
        out.append("Delay = arrival on each stream minus arrival on a reference stream opened straight on the "
                   "daemon's unix socket, for the same event (a container create); \"all reached\" = the "
                   "slowest stream, median over events. Memory is the proxy's whole process tree (the binary "
                   "runs as 3 processes: staticx and PyInstaller bootloaders, then Python), idle and with "
                   "the streams open. The probe stamps arrivals per select() wake-up, so streams that arrive "
                   "together with the reference show 0. CPU per delivery = the proxy's CPU time (user+sys) "
                   "while the events flowed, over events x streams (it includes the periodic idle loop).\n")
        out.append("| contender | idle RSS MiB | RSS MiB with streams | PSS MiB with streams | delay p50 ms "
                   "| p90 ms | p99 ms | max ms | all reached ms | p99 added vs direct ms | proxy CPU per delivery us | missing |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        direct_p99 = (ev["contenders"].get("direct") or {}).get("delay_us", {}).get("p99")
        for c in CONTENDERS:
            e = ev["contenders"].get(c)
            if not e:
                continue
            d = e["delay_us"]
            added = "—" if direct_p99 is None or c == "direct" else f"{(d['p99'] - direct_p99) / 1000:+.2f}"
            out.append(f"| {NAMES[c]} | {mib(e.get('idle', {}).get('rss_kb'))} | {mib(peak(e, 'rss_kb'))} "
                       f"| {mib(peak(e, 'pss_kb'))} | {ms(d['p50'])} | {ms(d['p90'])} | {ms(d['p99'])} | {ms(d['max'])} "
                       f"| {ms(e['all_reached_us']['median'])} | {added} | {fmt(e.get('cpu_per_delivery_us'), 1)} "
                       f"| {e['missing'] + e['dropped']} |")
        out.append("")

    rows = targets(results)
    if rows:
        out.append("## Targets\n")
        out.append("| target | threshold | porthole (src) | porthole (bin) |")
        out.append("| --- | --- | --- | --- |")
        for name, threshold, per in rows:
            cells = []
            for c in PORTHOLES:
                text, ok = per[c]
                cells.append(text + ("" if ok is None else (" **met**" if ok else " **missed**")))
            out.append(f"| {name} | {threshold} | " + " | ".join(cells) + " |")
        out.append("")

    out.append("## Setup\n")
    out.append(f"- Private dockerd (Debian docker.io, `--bridge=none --iptables=false --ip6tables=false "
               f"--ip-forward=false --ip-masq=false`, temp roots, own unix socket plus `tcp://127.0.0.1` for "
               f"direct) with {cfg['containers']} labelled containers from a FROM-scratch busybox image, all "
               f"`--network none`, {cfg['running']} running `sleep`.")
    out.append(f"- Fake upstream: nginx, 1 worker, on a unix socket (and 127.0.0.1 for direct), serving a canned "
               f"{cfg.get('large_response_bytes', 0):,}-byte `/containers/json`.")
    out.append(f"- HAProxy: `haproxy.cfg.in`, nbthread {cfg['haproxy_nbthread']}, allowlist equivalent to the default "
               f"profile, one log line per request; porthole: `{cfg['porthole_args'].strip()}`, default logging "
               f"(one JSON line per request). Both run as uid 65532 with the socket's group, logs to a file.")
    threads = sorted({(s["connections"], s["wrk_threads"]) for s in sc.values()})
    out.append("- Load: wrk (" + ", ".join(f"-c{c} -t{t}" for c, t in threads) + "), same machine; the "
               "watchers probe is one Python process (bench/watchers.py).")
    out.append("")
    out.append("## Caveats\n")
    out.append(f"- {m['nproc']} CPUs shared by the load generator, the proxy and the daemon (nothing pinned): "
               "absolute figures are low and ratios are what carries over.")
    neighbours = sorted(set(m.get("neighbours_start", [])) | set(m.get("neighbours_end", [])))
    if neighbours:
        out.append(f"- Other work was running on the machine during the run (other test runs, another "
                   f"dockerd): {len(neighbours)} such processes seen at start/end, e.g. "
                   + "; ".join(f"`{n[:90]}`" for n in neighbours[:4]) + ". Interleaving spreads its effect over "
                   "all contenders, but noise is higher than on an idle machine.")
    else:
        out.append("- No other heavy process was seen at the start or end of the run (others may have come and gone).")
    out.append("")
    problems = results.get("problems") or []
    if problems:
        out.append("## Problems\n")
        out.extend(f"- {p}" for p in problems)
        out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        sys.stdout.write(render(json.load(f)))
