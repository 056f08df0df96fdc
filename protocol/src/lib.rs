//! Sans-IO protocol cores (placeholder until the control-plane issue lands).
