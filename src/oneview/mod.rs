//! Placeholder: filled in by the oneview work.
