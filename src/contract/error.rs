//! The one error type of the message path: a contract code, a message for a person,
//! whether the worker may retry it, and what the Router should see besides.

use std::time::Duration;

use super::codes::ErrorCode;

/// A failure that becomes a result's `error` object. Every input-reachable failure on the
/// message path is one of these; nothing on that path panics or returns another error type.
#[derive(Debug, Clone)]
pub struct TaskError {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
    /// A finer `error_type` than the code's family (`timeout`, `connection_error`, `5xx`,
    /// `provider_unavailable`).
    pub error_type: Option<&'static str>,
    /// Minimum delay before the next attempt (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
    /// What the block produced anyway (an HTTP 4xx/5xx response stays in `result`).
    /// Boxed: errors travel in `Result`s everywhere and should stay small.
    pub result: Option<Box<serde_json::Value>>,
}

/// The most a message keeps (bytes). Messages quote input (a path, a job type, an
/// upstream's words), and an ack or a result holds its message twice (`error.message` and
/// `message` or `error_message`): unbounded, a large quoted value made them larger than
/// NATS `max_payload`, and the client refused them.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `message` cut to [`MAX_MESSAGE_BYTES`] (at a character boundary), saying how long it was.
fn bounded(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let total = message.len();
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(&format!("… ({total} bytes in all)"));
    message
}

impl TaskError {
    /// A non-retryable error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        TaskError {
            code,
            message: bounded(message.into()),
            retryable: false,
            error_type: None,
            retry_after: None,
            result: None,
        }
    }

    /// A transient error the worker retries with backoff.
    pub fn retryable(code: ErrorCode, message: impl Into<String>) -> Self {
        TaskError {
            retryable: true,
            ..TaskError::new(code, message)
        }
    }

    pub fn with_type(mut self, error_type: &'static str) -> Self {
        self.error_type = Some(error_type);
        self
    }

    pub fn with_result(mut self, result: serde_json::Value) -> Self {
        self.result = Some(Box::new(result));
        self
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// `1002`: a required field is missing.
    pub fn missing(field: &str) -> Self {
        TaskError::new(
            ErrorCode::MissingRequiredField,
            format!("missing required field `{field}`"),
        )
    }

    /// `1003`: a field has the wrong JSON type.
    pub fn format(field: &str, expected: &str) -> Self {
        TaskError::new(
            ErrorCode::InvalidFormat,
            format!("field `{field}` must be {expected}"),
        )
    }

    /// `1001`: a field has a value the worker cannot accept.
    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Self {
        TaskError::new(ErrorCode::InvalidInput, format!("field `{field}`: {why}"))
    }

    /// `4001`: a bug in the worker.
    pub fn internal(message: impl Into<String>) -> Self {
        TaskError::new(ErrorCode::InternalError, message)
    }

    /// The `error_type` string the deployed Router reads.
    pub fn error_type(&self) -> &'static str {
        if let Some(t) = self.error_type {
            return t;
        }
        match self.code {
            ErrorCode::ConnectionTimeout | ErrorCode::CancelledByTimeout => "timeout",
            ErrorCode::NetworkError => "connection_error",
            code => code.family(),
        }
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code.code(),
            self.code.name(),
            self.message
        )
    }
}

impl std::error::Error for TaskError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_message_is_kept_whole() {
        let e = TaskError::new(ErrorCode::InvalidInput, "field `job.type`: unknown");
        assert_eq!(e.message, "field `job.type`: unknown");
    }

    #[test]
    fn a_long_message_is_cut_at_a_character_and_says_how_long_it_was() {
        // Two-byte characters from an odd offset: the limit falls inside one.
        let quoted = format!("x{}", "é".repeat(2000));
        let e = TaskError::invalid("job.type", format!("unknown block type {quoted:?}"));
        let total = "field `job.type`: unknown block type \"\"".len() + quoted.len();
        let (kept, tail) = e.message.split_once('…').expect("cut");
        assert!(kept.len() <= MAX_MESSAGE_BYTES && kept.len() > MAX_MESSAGE_BYTES - 2);
        assert!(kept.starts_with("field `job.type`: unknown block type \"xé"));
        assert_eq!(tail, format!(" ({total} bytes in all)"));
    }
}
