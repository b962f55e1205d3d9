"""The four statuses a check's verdict takes: results.json's `status`, pytest's outcome, the reports' colours."""

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
