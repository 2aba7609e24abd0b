"""Alerts: what the operator must hear of, sent once per cluster by email and webhooks."""
