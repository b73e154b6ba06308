//! Connecting to NATS: auth, TLS, endless reconnects, and each connection's state in
//! `metrics.connections` (gauge, reconnects, health).

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;

use crate::config::Config;
use crate::telemetry::Metrics;

use super::TransportError;

/// Which of the worker's connections: the control connection (heartbeats, cancels,
/// decisions, approvals) or the intake lane of one CPU thread (assignments in, acks and
/// results out). Each is a `connection` label value of `worker_nats_connected` and
/// `worker_nats_reconnects_total` (`control`, `lane-N`), and health sees each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Control,
    Lane(usize),
}

impl Role {
    /// The `connection` label.
    pub fn label(self) -> String {
        match self {
            Role::Control => "control".to_owned(),
            Role::Lane(i) => format!("lane-{i}"),
        }
    }
}

/// Connects with the configured auth and TLS and keeps reconnecting forever; each
/// connection's state is in `metrics.connections` (gauge, reconnects, health).
pub async fn connect(
    cfg: &Config,
    metrics: Arc<Metrics>,
    role: Role,
) -> Result<Client, TransportError> {
    connect_with(cfg, metrics, role, Buffers::default()).await
}

/// How many messages a connection's client may buffer: per subscription (what does not fit
/// is dropped by the client, as for a slow consumer) and outgoing (a publish waits).
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    pub subscription: usize,
    pub outgoing: usize,
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            subscription: 65_536,
            outgoing: 65_536,
        }
    }
}

/// [`connect`] with the client's buffers sized by the caller (an intake lane sizes them
/// from its share of `--max-memory-mb`).
pub async fn connect_with(
    cfg: &Config,
    metrics: Arc<Metrics>,
    role: Role,
    buffers: Buffers,
) -> Result<Client, TransportError> {
    let label = role.label();
    metrics.connections.opening(&label);
    let name = match role {
        Role::Control => format!("beamline_worker {}", cfg.worker_id),
        Role::Lane(i) => format!("beamline_worker {} lane {i}", cfg.worker_id),
    };
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(Duration::from_secs(10))
        .client_capacity(buffers.outgoing.max(1))
        .subscription_capacity(buffers.subscription.max(1))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((50u64 << attempts.min(6)).min(2_000))
        })
        // The client's events name only the kind of a failed attempt ("IO error"); the
        // server pool it hands this callback carries the cause (certificate not trusted,
        // connection refused, ...): log it, at attempts 1, 2, 4, 8, ... per server.
        .reconnect_to_server_callback(|servers, _info| async move {
            log_failed_attempts(&servers);
            None
        })
        .event_callback(move |event| {
            on_event(metrics.clone(), label.clone(), role, event);
            std::future::ready(())
        });
    let auth = &cfg.nats_auth;
    if let (Some(u), Some(p)) = (&auth.user, &auth.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &auth.token {
        opts = opts.token(t.clone());
    }
    if let Some(seed) = &auth.nkey_seed {
        opts = opts.nkey(seed.clone());
    }
    if let Some(f) = &auth.creds_file {
        opts = opts
            .credentials_file(f)
            .await
            .map_err(|e| TransportError::new(format!("--nats-creds {}", f.display()), e))?;
    }
    if let Some(ca) = &auth.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    // A comma-separated list names the servers of a cluster.
    let servers = cfg
        .nats_url
        .split(',')
        .map(|s| s.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::new(format!("--nats-url {}", cfg.nats_url), e))?;
    let client = opts
        .connect(servers)
        .await
        .map_err(|e| TransportError::new(format!("connecting to {}", cfg.nats_url), e))?;
    Ok(client)
}

/// Logs why connection attempts failed, at attempts 1, 2, 4, 8, ... per server.
fn log_failed_attempts(servers: &[async_nats::Server]) {
    for s in servers
        .iter()
        .filter(|s| s.failed_attempts.is_power_of_two())
    {
        if let Some(error) = &s.last_error {
            tracing::warn!(
                server = %format!("{}:{}", s.addr.host(), s.addr.port()),
                attempts = s.failed_attempts,
                error = %error,
                "NATS connection attempt failed"
            );
        }
    }
}

/// A connection's event: its state in `metrics.connections` (gauge, reconnects, health)
/// and a log line.
fn on_event(metrics: Arc<Metrics>, label: String, role: Role, event: async_nats::Event) {
    match (role, event) {
        (_, async_nats::Event::Connected) => {
            metrics.connections.up(&label);
            match role {
                Role::Lane(lane) => tracing::debug!(lane, "NATS lane connection up"),
                Role::Control => tracing::info!(event = "nats_connected", "NATS connection up"),
            }
        }
        (_, async_nats::Event::Disconnected) => {
            metrics.connections.down(&label);
            tracing::warn!(
                event = "nats_disconnected",
                connection = %label,
                "NATS connection lost; reconnecting"
            );
        }
        // The lane's subscription buffer was full: the client dropped an assignment
        // (counted by the core intake from the client's statistics).
        (Role::Lane(lane), async_nats::Event::SlowConsumer(_)) => {
            tracing::debug!(lane, "lane subscription full: assignment dropped");
        }
        (_, other) => tracing::warn!(connection = %label, event = %other, "NATS event"),
    }
}
