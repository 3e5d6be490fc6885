"""shardsession.coordinator package."""
