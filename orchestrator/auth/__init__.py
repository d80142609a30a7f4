"""API tokens, roles and the audit log (SPEC §3.4: viewers read, operators act, admins manage)."""
