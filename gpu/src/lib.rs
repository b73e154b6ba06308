//! GPU device scheduler (shell).
