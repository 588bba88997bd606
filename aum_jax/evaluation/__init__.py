"""The evaluation pass, metrics, confusion matrices and reports."""
