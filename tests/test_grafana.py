"""ops/grafana/uploader.json: every query of the dashboard names a family /metrics exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sessions_app import metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "ops" / "grafana" / "uploader.json"
# PromQL words that look like metric names but are functions, keywords or label names.
PROMQL = {"sum", "by", "rate", "increase", "delta", "clamp_min", "time", "project", "status", "destination", "label_values"}


def queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"] if isinstance(var["query"], dict) else var["query"])
    return exprs


def test_every_dashboard_query_names_an_exported_family():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = queries(dashboard)
    assert len(exprs) >= 10
    for expr in exprs:
        names = {w for w in re.findall(r"[a-z_]+", re.sub(r'"[^"]*"|\[[^]]*\]|\{\{[^}]*\}\}', "", expr))
                 if w not in PROMQL}
        assert names, expr
        assert names <= set(metrics.FAMILIES), (expr, names - set(metrics.FAMILIES))


def test_the_dashboard_covers_throughput_status_failures_queues_and_workers():
    dashboard = json.loads(DASHBOARD.read_text())
    used = " ".join(queries(dashboard))
    assert 'uploader_files_total{project=~"$project",status="uploaded"}' in used
    assert "uploader_bytes_uploaded_total" in used
    assert 'status="failed"' in used
    for family in ("uploader_queue_depth", "uploader_task_queue_depth", "uploader_workers_alive"):
        assert family in used
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
