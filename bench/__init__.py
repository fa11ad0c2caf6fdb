"""`make bench`: throughput and latency figures against the budgets of docs/architecture.md."""
