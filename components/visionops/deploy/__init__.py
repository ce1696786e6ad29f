"""Deploy step: point serving at a model bundle and wait until the new model answers.

``deploy(model_uri, target="kubernetes")`` patches ``VISIONOPS_MODEL_URI`` in the serving Deployment (a
rolling update that ``kubectl rollout undo`` can revert) and waits for the rollout; ``target="local"`` records
the URI in ``<state_dir>/current_model.json`` for a local serving process; ``target="none"`` records nothing.
"""

from visionops.deploy.core import (
    DEFAULT_CONTAINERS,
    DEFAULT_DEPLOYMENT,
    DEFAULT_NAMESPACE,
    MODEL_URI_ENV,
    STATE_FILE,
    TARGETS,
    DeployError,
    deploy,
    read_current_model,
)

__all__ = [
    "DEFAULT_CONTAINERS",
    "DEFAULT_DEPLOYMENT",
    "DEFAULT_NAMESPACE",
    "MODEL_URI_ENV",
    "STATE_FILE",
    "TARGETS",
    "DeployError",
    "deploy",
    "read_current_model",
]
