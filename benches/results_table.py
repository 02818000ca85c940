"""Turn the load driver's RESULT lines (JSON, one per run) into a markdown
table and an SVG plot of p99 latency against offered message rate.

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
    idle = next((r for r in rs if r["scenario"] == "idle"), {})
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

# p99 latency (log scale) against offered rate, one line per server.
W, H, L, B = 640, 400, 70, 50
series = {k: [(r["offered_per_sec"], max(r["p99_ms"], 0.01)) for r in v if r["scenario"] == "messages" and r.get("offered_per_sec", 0) > 0] for k, v in by.items()}
xs = [x for s in series.values() for x, _ in s] or [1]
import math
xmax = max(xs)
ymin, ymax = 0.01, max([y for s in series.values() for _, y in s] + [1.0])
def px(x): return L + (W - L - 20) * x / xmax
def py(y): return H - B - (H - B - 20) * (math.log10(y) - math.log10(ymin)) / (math.log10(ymax) - math.log10(ymin))
colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<line x1="{L}" y1="{H-B}" x2="{W-20}" y2="{H-B}" stroke="black"/>', f'<line x1="{L}" y1="20" x2="{L}" y2="{H-B}" stroke="black"/>',
       f'<text x="{W/2}" y="{H-10}" text-anchor="middle">offered messages per second</text>',
       f'<text x="15" y="{H/2}" transform="rotate(-90 15 {H/2})" text-anchor="middle">p99 latency, ms (log)</text>']
for i, (label, pts) in enumerate(series.items()):
    pts = sorted(pts)
    c = colors[i % len(colors)]
    svg.append('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>'.format(c, " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)))
    svg.append(f'<text x="{W-150}" y="{30+16*i}" fill="{c}">{label}</text>')
    for x, y in pts:
        svg.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{c}"/>')
for x in sorted(set(xs)):
    svg.append(f'<text x="{px(x):.1f}" y="{H-B+15}" text-anchor="middle">{x}</text>')
for d in range(int(math.floor(math.log10(ymin))), int(math.ceil(math.log10(ymax))) + 1):
    y = 10 ** d
    if ymin <= y <= ymax:
        svg.append(f'<text x="{L-5}" y="{py(y)+4:.1f}" text-anchor="end">{y:g}</text>')
svg.append("</svg>")
with open(f"{out}/latency.svg", "w") as f:
    f.write("\n".join(svg))
