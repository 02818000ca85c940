"""Fetch a node's /metrics and parse it with the Prometheus Python client's
OpenMetrics parser (strict: a malformed exposition raises). Prints one JSON
object: {"families": [name, ...], "samples": [[name, labels, value], ...]}.

usage: metrics_parse.py URL
"""
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

URL = sys.argv[1]

# Loopback only: no proxy from the environment.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(URL, timeout=10) as r:
    ctype = r.headers.get("Content-Type", "")
    text = r.read().decode()
if not ctype.startswith("application/openmetrics-text"):
    print(f"FAIL content type {ctype!r}", flush=True)
    sys.exit(1)
samples = []
# Families declared without samples yet (a counter family nothing has
# bumped) are not yielded by the parser; their TYPE lines name them.
families = [l.split()[2] for l in text.splitlines() if l.startswith("# TYPE ")]
for family in text_string_to_metric_families(text):
    families.append(family.name)
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
print(json.dumps({"families": families, "samples": samples}), flush=True)
