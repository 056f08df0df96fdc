//! Deterministic simulator (placeholder until the control-plane issue lands).
