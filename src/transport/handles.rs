//! Small views of NATS handles for the code outside `transport/`, so that it never names
//! an `async_nats` type: for the app, the connection and JetStream context it passes
//! around, a connection check and the last flush at the stop.

use std::time::Duration;

/// A connection to NATS as [`super::connect`] makes it; outside `transport/` it is only
/// held and handed back to transport functions.
pub type Connection = async_nats::Client;

/// A JetStream context as [`jetstream_context`] makes it.
pub type JetStreamContext = async_nats::jetstream::Context;

/// The JetStream context of `client` whose API calls give up after `timeout`.
pub fn jetstream_context(client: Connection, timeout: Duration) -> JetStreamContext {
    async_nats::jetstream::ContextBuilder::new()
        .timeout(timeout)
        .build(client)
}

/// Whether `client` is connected to a server now.
pub fn is_connected(client: &Connection) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Flushes what `client` still holds to the server; an error (no server) is not reported:
/// the caller bounds the wait and logs what it knows.
pub async fn flush(client: &Connection) {
    let _ = client.flush().await;
}
