//! Placeholder: filled in by the pagerduty work.
