"""Model registry: register challengers, load by alias, move the champion alias."""
