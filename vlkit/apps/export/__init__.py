"""``vlkit export``: a fitted run as one self-contained ONNX or TorchScript model (issue 20, item 1).

``export_run(run_dir, format="onnx", int8=False, out=...)`` loads a ``vlkit fit --run-dir``
run (or a ``vlkit upgrade`` run), folds what the method learned into a fixed graph
(:mod:`.heads`, :mod:`.graph`), writes it with its class names and preprocessing in the
metadata (:mod:`.writer`), and checks it against the Python path on the run's test data.
:class:`ExportedModel` (:mod:`.runtime`) loads and runs an exported file.
"""
from vlkit.apps.export.graph import NotExportableError, check_exportable, classifier_module
from vlkit.apps.export.run import export_run
from vlkit.apps.export.runtime import ExportedModel
from vlkit.apps.export.writer import FORMATS, export_method

__all__ = ["FORMATS", "ExportedModel", "NotExportableError", "check_exportable", "classifier_module",
           "export_method", "export_run"]
