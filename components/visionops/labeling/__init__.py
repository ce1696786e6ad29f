"""The labeling loop: captured images -> selection for review -> pre-labels by the champion -> review tasks
(Label Studio or CSV) -> validated human labels + the live quality estimate -> a labeled batch that
``data ingest`` merges into the next dataset version (the golden set untouched).

Importing this package loads no model and creates no client; torch is imported only when a model runs.
"""

from visionops.labeling.artifact import Selection, load_selection
from visionops.labeling.export import export, labeling_config
from visionops.labeling.importer import ImportResult, agreement, import_reviews, wilson_interval
from visionops.labeling.merge import merge_batch, write_combined_labels
from visionops.labeling.prelabel import prelabel
from visionops.labeling.prepare import prepare_review_batch
from visionops.labeling.select import select

__all__ = [
    "ImportResult",
    "Selection",
    "agreement",
    "export",
    "import_reviews",
    "labeling_config",
    "load_selection",
    "merge_batch",
    "prelabel",
    "prepare_review_batch",
    "select",
    "wilson_interval",
    "write_combined_labels",
]
