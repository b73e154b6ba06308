//! Wire types only: the assignment as read, the messages written, the error codes.
//! Nothing here knows NATS, blocks or the runtime.

pub mod assignment;
pub mod codes;
pub mod control;
pub mod dead_letter;
pub mod error;
pub mod fastjson;
pub mod fields;
pub mod wire;

pub use assignment::{Assignment, AssignmentHeaders, ParseLimits, RetryPolicy, Unanswerable};
pub use codes::{AckStatus, ErrorCode, Status};
pub use error::TaskError;
pub use fields::Fields;
