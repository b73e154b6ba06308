//! Loopback ports: one that is free now, and which process listens on one.

use std::net::TcpListener;

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

/// Whether process `pid` holds the listening socket of `127.0.0.1:port` (or of any
/// address on `port`): the socket's inode, from `/proc/net/tcp`, among the process's open
/// descriptors. A port picked by [`free_port`] is free only at that moment: another
/// process may bind it first, and then a connection to it reaches that process, not the
/// one started with it (a worker that could not bind its metrics port exits, while its
/// port answers for someone else).
pub fn is_listening(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            inodes.iter().any(|i| target == format!("socket:[{i}]"))
        })
    })
}

/// Whether any process listens on `port`.
pub fn is_listening_anyone(port: u16) -> bool {
    !listening_inodes(port).is_empty()
}

/// The inodes of the IPv4 and IPv6 TCP sockets listening on `port`.
fn listening_inodes(port: u16) -> Vec<String> {
    const LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let on_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if on_port && *state == LISTEN {
                inodes.push((*inode).to_owned());
            }
        }
    }
    inodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_this_process_s_and_not_another_s() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert!(is_listening(std::process::id(), port));
        // PID 1 (init) does not hold this test's socket.
        assert!(!is_listening(1, port));
        drop(l);
        assert!(!is_listening(std::process::id(), port));
    }
}
