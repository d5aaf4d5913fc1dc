"""Signed webhooks: events and operations (events.py), the SSRF guard (ssrf.py), the scheduler
and delivery worker (dispatcher.py)."""
