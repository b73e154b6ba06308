//! The control connection's intake: cancel requests and approval decisions.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::Subjects;

use super::{Control, JetStreamHandles};

/// Cancel requests reach every instance (plain subscription, no queue group).
pub async fn consume_control(
    client: Client,
    subjects: Subjects,
    js: Option<JetStreamHandles>,
    sink: Arc<dyn Control>,
    stop: CancellationToken,
) {
    let cancels = async {
        loop {
            match client.subscribe(subjects.cancel.clone()).await {
                Ok(mut sub) => {
                    while let Some(m) = sub.next().await {
                        let tenant = m.headers.as_ref().and_then(|h| h.get("tenant_id"));
                        sink.cancel(&m.payload, tenant.map(|t| t.as_str()));
                    }
                }
                Err(e) => tracing::error!(error = %e, "subscribing to cancels failed"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let decisions = async {
        match js {
            // Decisions are kept in a stream so that none is lost while a worker restarts;
            // every instance replays them through its own ordered consumer.
            Some(js) if js.approvals.is_some() => loop {
                match js.decisions().await {
                    Ok(mut msgs) => {
                        while let Some(m) = msgs.next().await {
                            match m {
                                Ok(m) => sink.decision(&m.payload),
                                Err(e) => {
                                    tracing::warn!(error = %e, "approval decision stream error");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading approval decisions failed"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            },
            _ => loop {
                match client.subscribe(subjects.approval_decision.clone()).await {
                    Ok(mut sub) => {
                        while let Some(m) = sub.next().await {
                            sink.decision(&m.payload);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "subscribing to approval decisions failed")
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            },
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = cancels => {}
        _ = decisions => {}
    }
}
