//! SSRF policy for `http.request` (being written).
