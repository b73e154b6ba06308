//! Scenarios, block types and the assignment payloads the bench publishes.

use std::io::Write as _;

use bytes::Bytes;
use serde::Serialize;

/// Tenant every bench assignment runs as (fs paths live under `<fs-root>/bench/`).
pub(crate) const TENANT: &str = "bench";
/// Number of distinct `fs.put` target files (`/bench/out/<n>.json`, n = seq mod this).
/// Bounded so a long run does not fill the disk; far above any window so two in-flight
/// puts never share a file.
pub(crate) const PUT_FILES: u64 = 4096;
/// Rows in the SQL fixture; `sql.query` asks for id `seq mod ROWS + 1`.
pub(crate) const SQL_ROWS: u64 = 1000;
/// The `ai.inference` model, tenant-relative (`<fs-root>/bench/bench/model.safetensors`).
pub(crate) const MODEL_PATH: &str = "/bench/model.safetensors";
/// Input width of the bench model (one input row per assignment).
pub(crate) const MODEL_IN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Scenario {
    /// `fs.get` of a 1 KiB file.
    FsGet,
    /// `fs.put` of a ~200 byte JSON document.
    FsPut,
    /// `http.request` GET against the bench's local keep-alive upstream.
    Http,
    /// `sql.query` single-row SELECT on the SQLite fixture.
    Sql,
    /// Round-robin of the four above (1:1:1:1).
    Mix,
    /// `ai.inference` of one 16-value row on a small feed-forward model (the worker gets a
    /// GPU pool; not in the default set, not in `mix`, not gated).
    Inference,
}

impl Scenario {
    /// The default set (no `--scenario`): `inference` is asked for by name only, since it
    /// needs the worker's GPU pool, which is off at the worker's defaults.
    pub(crate) const ALL: [Scenario; 5] = [
        Scenario::FsGet,
        Scenario::FsPut,
        Scenario::Http,
        Scenario::Sql,
        Scenario::Mix,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::FsGet => "fs-get",
            Scenario::FsPut => "fs-put",
            Scenario::Http => "http",
            Scenario::Sql => "sql",
            Scenario::Mix => "mix",
            Scenario::Inference => "inference",
        }
    }

    /// Block type of the `seq`-th assignment of this scenario.
    pub(crate) fn block_for(self, seq: u64) -> BlockType {
        match self {
            Scenario::FsGet => BlockType::FsGet,
            Scenario::FsPut => BlockType::FsPut,
            Scenario::Http => BlockType::Http,
            Scenario::Sql => BlockType::Sql,
            Scenario::Mix => BlockType::MIX[(seq % 4) as usize],
            Scenario::Inference => BlockType::Inference,
        }
    }

    /// Whether the plain-loop worker can run this scenario (it has no inference).
    pub(crate) fn plain_loop_can_run(self) -> bool {
        self != Scenario::Inference
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub(crate) enum BlockType {
    #[serde(rename = "fs.get")]
    FsGet,
    #[serde(rename = "fs.put")]
    FsPut,
    #[serde(rename = "http.request")]
    Http,
    #[serde(rename = "sql.query")]
    Sql,
    #[serde(rename = "ai.inference")]
    Inference,
}

impl BlockType {
    /// Every type the bench sends, in index order (`RunOutcome::types`).
    pub(crate) const ALL: [BlockType; 5] = [
        BlockType::FsGet,
        BlockType::FsPut,
        BlockType::Http,
        BlockType::Sql,
        BlockType::Inference,
    ];
    /// The types of `mix` (and of the gate), in its round-robin order.
    pub(crate) const MIX: [BlockType; 4] = [
        BlockType::FsGet,
        BlockType::FsPut,
        BlockType::Http,
        BlockType::Sql,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn job_type(self) -> &'static str {
        match self {
            BlockType::FsGet => "fs.get",
            BlockType::FsPut => "fs.put",
            BlockType::Http => "http.request",
            BlockType::Sql => "sql.query",
            BlockType::Inference => "ai.inference",
        }
    }

    /// CP3-LC result-latency limit (p99) for this block type, in milliseconds; `None`
    /// for a type the gate does not judge.
    pub(crate) fn gate_p99_limit_ms(self) -> Option<f64> {
        match self {
            BlockType::FsGet | BlockType::FsPut => Some(200.0),
            BlockType::Http => Some(500.0),
            BlockType::Sql => Some(300.0),
            BlockType::Inference => None,
        }
    }
}

/// Builds assignment payloads by plain concatenation (no serializer on the hot path).
#[derive(Debug, Clone)]
pub(crate) struct PayloadBuilder {
    http_url: String,
    put_pad: String,
}

impl PayloadBuilder {
    pub(crate) fn new(http_port: u16) -> Self {
        PayloadBuilder {
            http_url: format!("http://127.0.0.1:{http_port}/x"),
            put_pad: "x".repeat(160),
        }
    }

    /// Full `ExecAssignment` JSON for one task. `id` must not need JSON escaping
    /// (the bench only generates `[A-Za-z0-9-]` ids).
    pub(crate) fn assignment(&self, id: &str, seq: u64, block: BlockType) -> Bytes {
        let mut buf = Vec::with_capacity(320);
        // Writes into a Vec cannot fail.
        let _ = write!(
            buf,
            r#"{{"version":"1","assignment_id":"{id}","tenant_id":"{TENANT}","request_id":"{id}","job":"#
        );
        let _ = match block {
            BlockType::FsGet => write!(buf, r#"{{"type":"fs.get","path":"/bench/1k.bin"}}"#),
            BlockType::FsPut => write!(
                buf,
                r#"{{"type":"fs.put","path":"/bench/out/{n}.json","content":"{{\"seq\":{seq},\"pad\":\"{pad}\"}}","content_type":"application/json"}}"#,
                n = seq % PUT_FILES,
                pad = self.put_pad
            ),
            BlockType::Http => write!(
                buf,
                r#"{{"type":"http.request","method":"GET","url":"{url}","timeout_ms":5000}}"#,
                url = self.http_url
            ),
            BlockType::Sql => write!(
                buf,
                r#"{{"type":"sql.query","connection_string":"sqlite://bench.db","query":"SELECT id, name FROM users WHERE id = ?","parameters":["{k}"]}}"#,
                k = seq % SQL_ROWS + 1
            ),
            BlockType::Inference => {
                // One row that varies with seq, so results are not all the same.
                let _ = write!(
                    buf,
                    r#"{{"type":"ai.inference","model":"{MODEL_PATH}","inputs":[["#
                );
                for i in 0..MODEL_IN as u64 {
                    let sep = if i == 0 { "" } else { "," };
                    let v = ((seq + i) % 9) as f32 * 0.25 - 1.0;
                    let _ = write!(buf, "{sep}{v}");
                }
                write!(buf, "]]}}")
            }
        };
        buf.push(b'}');
        Bytes::from(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_valid_json_with_expected_fields() {
        let b = PayloadBuilder::new(8080);
        for (seq, block) in BlockType::ALL.iter().enumerate() {
            let p = b.assignment("bx-1-7", seq as u64, *block);
            let v: serde_json::Value = serde_json::from_slice(&p).expect("valid json");
            assert_eq!(v["version"], "1");
            assert_eq!(v["assignment_id"], "bx-1-7");
            assert_eq!(v["tenant_id"], "bench");
            assert_eq!(v["job"]["type"], block.job_type());
        }
        let put: serde_json::Value =
            serde_json::from_slice(&b.assignment("a", 4097, BlockType::FsPut)).expect("json");
        assert_eq!(put["job"]["path"], "/bench/out/1.json");
        let inner: serde_json::Value =
            serde_json::from_str(put["job"]["content"].as_str().expect("str")).expect("json");
        assert_eq!(inner["seq"], 4097);
    }

    #[test]
    fn mix_is_round_robin() {
        let kinds: Vec<_> = (0..8).map(|s| Scenario::Mix.block_for(s)).collect();
        assert_eq!(&kinds[..4], &BlockType::MIX);
        assert_eq!(&kinds[4..], &BlockType::MIX);
        assert!(!kinds.contains(&BlockType::Inference));
        assert_eq!(Scenario::Sql.block_for(3), BlockType::Sql);
    }

    #[test]
    fn inference_parses_and_maps_to_ai_inference() {
        use clap::ValueEnum as _;
        let s = Scenario::from_str("inference", false).expect("parses");
        assert_eq!(s, Scenario::Inference);
        assert_eq!(s.name(), "inference");
        assert_eq!(s.block_for(0), BlockType::Inference);
        assert_eq!(s.block_for(7), BlockType::Inference);
        assert_eq!(BlockType::Inference.job_type(), "ai.inference");
        assert!(!s.plain_loop_can_run());
        assert!(Scenario::Sql.plain_loop_can_run());
        // Opt-in only, and never judged by the gate.
        assert!(!Scenario::ALL.contains(&Scenario::Inference));
        assert_eq!(BlockType::Inference.gate_p99_limit_ms(), None);
        // The index order is what RunOutcome::types is indexed by.
        for (i, b) in BlockType::ALL.iter().enumerate() {
            assert_eq!(b.index(), i);
        }
    }

    #[test]
    fn inference_payload_names_the_model_and_one_row_of_its_width() {
        let b = PayloadBuilder::new(8080);
        for seq in [0u64, 5, 1_000_003] {
            let p = b.assignment("bx-2-9", seq, BlockType::Inference);
            let v: serde_json::Value = serde_json::from_slice(&p).expect("valid json");
            assert_eq!(v["job"]["type"], "ai.inference");
            assert_eq!(v["job"]["model"], MODEL_PATH);
            let rows = v["job"]["inputs"].as_array().expect("rows");
            assert_eq!(rows.len(), 1);
            let row = rows[0].as_array().expect("row");
            assert_eq!(row.len(), MODEL_IN);
            assert!(row.iter().all(|x| x.as_f64().is_some_and(f64::is_finite)));
        }
    }
}
