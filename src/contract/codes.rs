//! The guide's error codes (1001…5002) as named constants, with the names and families
//! the deployed Router reads back (`error_code`, `error_type`).

/// One of the integration guide's error codes. The discriminant is the wire number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    InvalidInput = 1001,
    MissingRequiredField = 1002,
    InvalidFormat = 1003,
    ExecutionFailed = 2001,
    ResourceUnavailable = 2002,
    PermissionDenied = 2003,
    QuotaExceeded = 2004,
    NetworkError = 3001,
    ConnectionTimeout = 3002,
    HttpError = 3003,
    InternalError = 4001,
    SystemOverload = 4002,
    CancelledByUser = 5001,
    CancelledByTimeout = 5002,
}

impl ErrorCode {
    /// Every code, in wire order (for metrics pre-registration and tests).
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::InvalidInput,
        ErrorCode::MissingRequiredField,
        ErrorCode::InvalidFormat,
        ErrorCode::ExecutionFailed,
        ErrorCode::ResourceUnavailable,
        ErrorCode::PermissionDenied,
        ErrorCode::QuotaExceeded,
        ErrorCode::NetworkError,
        ErrorCode::ConnectionTimeout,
        ErrorCode::HttpError,
        ErrorCode::InternalError,
        ErrorCode::SystemOverload,
        ErrorCode::CancelledByUser,
        ErrorCode::CancelledByTimeout,
    ];

    /// The number on the wire (`error.code`).
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The name the original C++ worker used (`error_code`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "INVALID_INPUT",
            ErrorCode::MissingRequiredField => "MISSING_REQUIRED_FIELD",
            ErrorCode::InvalidFormat => "INVALID_FORMAT",
            ErrorCode::ExecutionFailed => "EXECUTION_FAILED",
            ErrorCode::ResourceUnavailable => "RESOURCE_UNAVAILABLE",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            ErrorCode::NetworkError => "NETWORK_ERROR",
            ErrorCode::ConnectionTimeout => "CONNECTION_TIMEOUT",
            ErrorCode::HttpError => "HTTP_ERROR",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::SystemOverload => "SYSTEM_OVERLOAD",
            ErrorCode::CancelledByUser => "CANCELLED_BY_USER",
            ErrorCode::CancelledByTimeout => "CANCELLED_BY_TIMEOUT",
        }
    }

    /// The code's family (`error_type` when no finer type fits).
    pub fn family(self) -> &'static str {
        match self.code() / 1000 {
            1 => "validation",
            2 => "execution",
            3 => "network",
            4 => "system",
            _ => "cancellation",
        }
    }

    /// Result status that goes with a terminal error of this code.
    pub fn status(self) -> Status {
        match self {
            ErrorCode::CancelledByUser => Status::Cancelled,
            ErrorCode::CancelledByTimeout => Status::Timeout,
            _ => Status::Error,
        }
    }
}

/// `ExecResult.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Success,
    Error,
    Timeout,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Error => "error",
            Status::Timeout => "timeout",
            Status::Cancelled => "cancelled",
        }
    }
}

/// `ExecAssignmentAck.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    Accepted,
    Rejected,
    Error,
}

impl AckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Accepted => "accepted",
            AckStatus::Rejected => "rejected",
            AckStatus::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_families_match_the_contract() {
        let expected = [
            (1001, "INVALID_INPUT", "validation"),
            (1002, "MISSING_REQUIRED_FIELD", "validation"),
            (1003, "INVALID_FORMAT", "validation"),
            (2001, "EXECUTION_FAILED", "execution"),
            (2002, "RESOURCE_UNAVAILABLE", "execution"),
            (2003, "PERMISSION_DENIED", "execution"),
            (2004, "QUOTA_EXCEEDED", "execution"),
            (3001, "NETWORK_ERROR", "network"),
            (3002, "CONNECTION_TIMEOUT", "network"),
            (3003, "HTTP_ERROR", "network"),
            (4001, "INTERNAL_ERROR", "system"),
            (4002, "SYSTEM_OVERLOAD", "system"),
            (5001, "CANCELLED_BY_USER", "cancellation"),
            (5002, "CANCELLED_BY_TIMEOUT", "cancellation"),
        ];
        for (code, (num, name, family)) in ErrorCode::ALL.iter().zip(expected) {
            assert_eq!(
                (code.code(), code.name(), code.family()),
                (num, name, family)
            );
        }
        assert_eq!(ErrorCode::CancelledByUser.status(), Status::Cancelled);
        assert_eq!(ErrorCode::CancelledByTimeout.status(), Status::Timeout);
        assert_eq!(ErrorCode::HttpError.status(), Status::Error);
    }
}
