"""efflab."""
