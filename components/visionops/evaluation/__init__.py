"""Evaluation and the promotion gate: the asymmetric-cost constraint, champion vs challenger, and the ops budget,
decided on a fixed golden set.

``evaluate(bundle_uri, dataset_uri, output, champion_uri=None, policy=GatePolicy(), device="cpu", gated_uri=None)``
returns the decision record, writes metrics.json, decision.json and the model card, and publishes the gated
bundle as a new version (the evaluated bundle is never modified); see docs/evaluation.md.
Importing this package loads neither torch nor a model.
"""

from visionops.evaluation.gate import GatePolicy, decide
from visionops.evaluation.run import evaluate, read_decision

__all__ = ["GatePolicy", "decide", "evaluate", "read_decision"]
