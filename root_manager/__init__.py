"""The root manager: addresses and the global service table, for the orchestrator and clusters."""
