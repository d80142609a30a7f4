"""Outbound notifiers of the outbox (``outbox.NOTIFIERS`` names them by kind)."""
