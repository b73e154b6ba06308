//! The test kit of beamline_worker: what `tests/` and `bench/` need to run the worker
//! against real processes, in one place, one module per job:
//!
//! | module | what it holds |
//! |---|---|
//! | [`ports`] | a free port of 127.0.0.1, which process listens on a port |
//! | [`nats_server`] | a `nats-server -js` on a free port, own store, killed on drop |
//! | [`worker`] | the worker binary as a child (`BEAMLINE_WORKER_BIN` honoured), own roots and ports |
//! | [`router`] | a Router stand-in on NATS, the contract's subjects, assignment and result helpers |
//! | [`listener`] | a Router stand-in with any connect options (auth, TLS, cluster), raw bodies |
//! | [`http_client`] | loopback GET of `/metrics` and `/_health`, health polling |
//! | [`http_server`] | HTTP/1.1 upstreams: scripted or slow, and the bench's fast responder |
//! | [`metrics`] | the Prometheus text exposition: parse, sum, single values |
//! | [`log_schema`] | the platform's log schema and a checker for the subset it uses |
//! | [`fixtures`] | files under tests/fixtures/, ops/, tuning/; the embedding models' directory |
//! | `echo_server` (feature `https`) | an httpbin-like hyper server (HTTP/1.1, HTTP/2, TLS); silent, resetting, closed endpoints |
//! | `tls` (feature `https`) | a test CA and a server certificate: rustls config and PEM files |
//! | `otlp` (feature `otlp`) | an OTLP/HTTP trace collector |
//! | `blocks` (feature `blocks`) | one block of the worker's library run on a job: parse, decode, attempt |
//!
//! Why a crate, and why at `testkit/`: `tests/*.rs` are each their own crate, so helpers
//! under `tests/` are compiled again into every test that names them (with `dead_code`
//! allowed), and `bench/` cannot reach them at all; a workspace member is built once and is
//! a normal dependency of both (a dev-dependency of the root crate, a dependency of
//! `beamline-bench`). It sits beside `bench/`, `io/` and `gpu/` like every other member
//! rather than under `tests/`, whose entries cargo takes for test targets (`tests/*.rs`,
//! `tests/*/main.rs`), so that the top level stays one folder per crate. Its features keep
//! the bench's build small: `otlp`, `https` and `blocks` are enabled by the root crate's
//! tests only, and only `blocks` depends on the worker's library (a dev-dependency cycle,
//! which cargo allows).
//!
//! Everything panics on failure (it is for tests) except what the bench calls, which returns
//! `std::io::Result`: [`NatsServer::builder`], [`ports::try_free_port`],
//! [`http_server::Responder::start`], [`http_client::status`].

#[cfg(feature = "blocks")]
pub mod blocks;
#[cfg(feature = "https")]
pub mod echo_server;
pub mod fixtures;
pub mod http_client;
pub mod http_server;
pub mod listener;
pub mod log_schema;
pub mod metrics;
pub mod nats_server;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod ports;
pub mod router;
#[cfg(feature = "https")]
pub mod tls;
pub mod worker;

pub use nats_server::{Nats, NatsServer};

/// What most end-to-end tests use: `use beamline_testkit::prelude::*;`.
pub mod prelude {
    pub use crate::http_client::http_get;
    pub use crate::nats_server::{Nats, NatsServer};
    pub use crate::ports::free_port;
    pub use crate::router::{
        assert_result_shape, assignment, ready, setup, stored_results, Router, Seen, ACK,
        APPROVAL_DECISION, APPROVAL_REQUEST, ASSIGN, CANCEL, DLQ, HEARTBEAT, RESULT,
    };
    pub use crate::worker::{Worker, WorkerBuilder};
}
