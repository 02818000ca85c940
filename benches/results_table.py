"""Turn the load driver's RESULT lines (JSON, one per run) into a markdown
table (the plot is benches/plot.rs, with plotters).

usage: results_table.py results.jsonl OUTDIR
"""
import json
import sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = sys.argv[2]
by = defaultdict(list)
for r in rows:
    by[r["label"]].append(r)

lines = ["| server | idle kB/session | logins/s | max msg/s (ping-pong) | offered msg/s | delivered msg/s | p50 ms | p99 ms | p99.9 ms | lost | server CPU s | driver CPU s |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for label, rs in by.items():
    idles = [r for r in rs if r["scenario"] == "idle"]
    idle = {}
    if idles:
        # Several idle rows under one label: one driver per cluster node.
        n = sum(r["sessions"] for r in idles)
        idle = {"sessions": n,
                "rss_per_session_bytes": sum(r["rss_per_session_bytes"] * r["sessions"] for r in idles) / max(n, 1)}
    login = next((r for r in rs if r["scenario"] == "login"), {})
    pp = next((r for r in rs if r["scenario"] == "messages" and r.get("offered_per_sec") == 0), {})
    first = True
    for r in [r for r in rs if r["scenario"] == "messages" and r.get("offered_per_sec", 0) > 0]:
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            label if first else "",
            f'{idle.get("rss_per_session_bytes", 0) / 1000:.1f} ({idle.get("sessions", "?")} sessions)' if first and idle else "",
            login.get("logins_per_sec", "") if first else "",
            pp.get("msgs_per_sec", "") if first else "",
            r["offered_per_sec"], r["msgs_per_sec"], r["p50_ms"], r["p99_ms"], r["p999_ms"], r["lost"],
            r["server_cpu_secs"], r["driver_cpu_secs"]))
        first = False
cluster = [r for r in rows if "same_node_p50_ms" in r]
if cluster:
    lines += ["", "Cluster (three nodes, users spread over them):", "",
              "| server | offered msg/s | delivered msg/s | same-node p50 ms | same-node p99 ms | cross-node p50 ms | cross-node p99 ms | added at p50 ms |",
              "|---|---|---|---|---|---|---|---|"]
    for r in cluster:
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {:.3f} |".format(
            r["label"], r["offered_per_sec"], r["msgs_per_sec"], r["same_node_p50_ms"], r["same_node_p99_ms"],
            r["cross_node_p50_ms"], r["cross_node_p99_ms"], r["cross_node_p50_ms"] - r["same_node_p50_ms"]))
with open(f"{out}/results.md", "w") as f:
    f.write("\n".join(lines) + "\n")
