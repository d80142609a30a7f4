"""Monitoring: probe kinds, the monitor state machine, the asyncio engine and its metrics."""
