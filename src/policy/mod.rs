//! Guards the blocks share: where HTTP may go, what SQL may do, what paths are.

pub mod sql_guard;
pub mod ssrf;
