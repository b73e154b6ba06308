//! The one error type of the scheduler: a kind to match on and a message for a person.

/// What went wrong, coarse enough for the worker to pick a contract code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request itself is unusable (wrong width, non-finite value, no rows). → 1001
    InvalidInput,
    /// `device: "cuda"` asked on a worker without a usable CUDA device. → 2002
    NoDevice,
    /// The model and its activations can never fit the device memory budget. → 2004
    TooLarge,
    /// The device failed while running (out of memory, driver error); retrying may work. → 2002
    Device,
    /// The network produced a NaN or an infinity. → 2001
    NonFinite,
    /// The request's deadline passed while it was queued. → 5002
    Deadline,
    /// The scheduler is shutting down. → 4002
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferError {
    pub kind: ErrorKind,
    pub message: String,
}

impl InferError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        InferError {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Device | ErrorKind::Shutdown)
    }
}

impl std::fmt::Display for InferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InferError {}
