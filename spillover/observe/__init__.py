"""The commands that look at a running spillover: `spillover status` (the admin endpoint's proxies and
models as tables, `--watch` redraws them) and `spillover report` (an overflow episode from Prometheus as a
PNG, drawn by spillover.dashboards.report). They read HTTP endpoints; they start and import no stage."""
