//! Binding (or, when allowed, creating) the JetStream objects the worker uses. Names come
//! from the config; defaults are documented in docs/ARCHITECTURE.md.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

use crate::config::Config;

use super::{Bucket, TransportError};

/// What JetStream mode works with.
#[derive(Debug, Clone)]
pub struct JetStreamHandles {
    pub(super) ctx: jetstream::Context,
    /// The stream that captures the assign subject (ours or one that already existed).
    pub stream_name: String,
    /// Completed results, for dedupe across restarts and instances.
    pub results: Option<Bucket>,
    /// The stream that keeps approval decisions.
    pub approvals: Option<String>,
    /// Whether the ack/result/DLQ subjects are captured by a stream.
    pub outputs_durable: bool,
    approval_subject: String,
}

fn err(what: &str, e: impl Into<super::BoxError>) -> TransportError {
    TransportError::new(what, e)
}

/// The stream that already captures `config.subjects[0]` (a Router deployment may own
/// one), else `config` created when `create` allows; `None` when neither.
async fn existing_or_created(
    ctx: &jetstream::Context,
    create: bool,
    config: stream::Config,
    what: &str,
) -> Result<Option<String>, TransportError> {
    let subject = config.subjects.first().cloned().unwrap_or_default();
    if let Ok(name) = ctx.stream_by_subject(subject).await {
        return Ok(Some(name));
    }
    if !create {
        return Ok(None);
    }
    let name = config.name.clone();
    ctx.get_or_create_stream(config)
        .await
        .map_err(|e| err(&format!("creating the {what} stream"), e))?;
    Ok(Some(name))
}

/// Binds every JetStream object, creating what is missing when `--js-create` allows.
pub async fn bind_jetstream(
    cfg: &Config,
    ctx: jetstream::Context,
) -> Result<JetStreamHandles, TransportError> {
    let s = &cfg.subjects;
    let js = &cfg.js;
    let assign = stream::Config {
        name: js.stream.clone(),
        subjects: vec![s.assign.clone()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: js.replicas,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let stream_name = existing_or_created(&ctx, js.create, assign, "assignment")
        .await?
        .ok_or_else(|| {
            TransportError::new(
                "binding the assignment stream",
                "no stream captures the assign subject and --js-create is off",
            )
        })?;

    let outputs_durable = bind_outputs(cfg, &ctx).await;
    let results = bind_results(cfg, &ctx).await?;

    let decisions = stream::Config {
        name: js.approval_stream.clone(),
        subjects: vec![s.approval_decision.clone()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: js.replicas,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    };
    let approvals = existing_or_created(&ctx, js.create, decisions, "approval decision").await?;

    Ok(JetStreamHandles {
        ctx,
        stream_name,
        results,
        approvals,
        outputs_durable,
        approval_subject: s.approval_decision.clone(),
    })
}

/// Whether the ack, result and DLQ subjects are kept by a stream: those captured by one
/// already are fine; the rest go in ours when `--js-create` allows.
async fn bind_outputs(cfg: &Config, ctx: &jetstream::Context) -> bool {
    let (s, js) = (&cfg.subjects, &cfg.js);
    // Outputs: every subject already captured somewhere is fine; the rest go in ours.
    let mut missing = Vec::new();
    for subject in [&s.ack, &s.result, &s.dlq] {
        if ctx.stream_by_subject(subject.clone()).await.is_err() {
            missing.push(subject.clone());
        }
    }
    let mut outputs_durable = missing.is_empty();
    if !missing.is_empty() && js.create {
        let r = ctx
            .get_or_create_stream(stream::Config {
                name: js.output_stream.clone(),
                subjects: missing.clone(),
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                num_replicas: js.replicas,
                max_age: Duration::from_secs(7 * 24 * 3600),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => outputs_durable = true,
            Err(e) => {
                tracing::warn!(error = %e, "could not create the output stream; acks/results go out as core messages")
            }
        }
    }
    outputs_durable
}

/// The bucket of completed results (dedupe across restarts and instances); created when
/// `--js-create` allows, else `None` (dedupe is then per process).
async fn bind_results(
    cfg: &Config,
    ctx: &jetstream::Context,
) -> Result<Option<Bucket>, TransportError> {
    let js = &cfg.js;
    Ok(match ctx.get_key_value(js.results_bucket.clone()).await {
        Ok(kv) => Some(Bucket::new(kv)),
        Err(_) if js.create => {
            // A key-value bucket is a stream of this shape. It is created directly because
            // the client's create_key_value first reads account info in a form that
            // nats-server 2.9 (Debian's) does not send.
            ctx.get_or_create_stream(stream::Config {
                name: format!("KV_{}", js.results_bucket),
                description: Some("beamline_worker completed results (dedupe)".into()),
                subjects: vec![format!("$KV.{}.>", js.results_bucket)],
                max_messages_per_subject: 1,
                max_age: cfg.dedupe_ttl,
                storage: stream::StorageType::File,
                num_replicas: js.replicas,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| err("creating the results bucket", e))?;
            Some(Bucket::new(
                ctx.get_key_value(js.results_bucket.clone())
                    .await
                    .map_err(|e| err("binding the results bucket", e))?,
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "no results bucket; dedupe is per process only");
            None
        }
    })
}

impl JetStreamHandles {
    /// The same objects, reached through another connection's context (an intake lane's).
    pub(super) fn through(&self, ctx: jetstream::Context) -> JetStreamHandles {
        JetStreamHandles {
            ctx,
            ..self.clone()
        }
    }

    /// The results bucket bound again through this context's connection (one stream-info
    /// call); `None`, logged, when that fails: the caller keeps using the shared one.
    pub(super) async fn bind_results_again(&self) -> Option<Bucket> {
        let name = self.results.as_ref()?.name();
        match self.ctx.get_key_value(name).await {
            Ok(kv) => Some(Bucket::new(kv)),
            Err(e) => {
                tracing::warn!(error = %e, "could not bind the results bucket through a lane; dedupe calls use the control connection");
                None
            }
        }
    }

    /// The durable pull consumer every instance shares (bound again after losses).
    pub(super) async fn assign_consumer(
        &self,
        cfg: &Config,
    ) -> Result<consumer::PullConsumer, TransportError> {
        let stream = self
            .ctx
            .get_stream(&self.stream_name)
            .await
            .map_err(|e| err("getting the assignment stream", e))?;
        let config = consumer::pull::Config {
            durable_name: Some(cfg.js.durable.clone()),
            description: Some("beamline_worker assignments".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: cfg.js.ack_wait,
            filter_subject: cfg.subjects.assign.clone(),
            max_ack_pending: (cfg.max_in_flight * cfg.cpu_pool_size * 4).max(1024) as i64,
            ..Default::default()
        };
        if cfg.js.create {
            stream
                .get_or_create_consumer(&cfg.js.durable, config)
                .await
                .map_err(|e| err("binding the durable consumer", e))
        } else {
            stream
                .get_consumer(&cfg.js.durable)
                .await
                .map_err(|e| err("getting the durable consumer", e))
        }
    }

    /// Every approval decision still kept, then new ones as they come.
    pub(super) async fn decisions(&self) -> Result<consumer::pull::Ordered, TransportError> {
        let name = self.approvals.as_deref().unwrap_or_default();
        let stream = self
            .ctx
            .get_stream(name)
            .await
            .map_err(|e| err("getting the approval stream", e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.approval_subject.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| err("creating the approval consumer", e))?;
        consumer
            .messages()
            .await
            .map_err(|e| err("reading approval decisions", e))
    }
}
