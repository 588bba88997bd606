"""The evaluation pass, the label loss, metrics, confusion matrices and reports."""
