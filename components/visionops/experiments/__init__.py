"""Online experiments: assignment and routing, shadow / canary / A/B analysis."""
