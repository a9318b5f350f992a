"""The network: links and sharing, schedules, messages, and the synchronous protocols."""
