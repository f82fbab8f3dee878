"""Canary rollout: the step policy, the online A/B test, and (later) the controller."""
