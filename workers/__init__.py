"""shardsession.workers package."""
