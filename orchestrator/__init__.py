"""cpdops: operations orchestrator for the SmartCPD cloud."""
