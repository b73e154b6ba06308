//! Loopback ports: one that is free now, and waiting for one to listen.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A port of 127.0.0.1 that was free a moment ago (the OS picked it for a listener that is
/// closed again before this returns). Panics when the OS gives none.
pub fn free_port() -> u16 {
    try_free_port().expect("free port")
}

/// [`free_port`] for callers that report errors instead of panicking (the bench).
pub fn try_free_port() -> std::io::Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// Whether something accepts a TCP connection on `127.0.0.1:port` within `timeout`
/// (polled every 20 ms).
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
