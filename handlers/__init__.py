"""Application layer: command handlers and subscribed event handlers."""
