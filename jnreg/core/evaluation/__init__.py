"""Evaluating an adapter: answers checked against the agent's schema, the gate's requirements, and generation."""
