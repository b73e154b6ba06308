//! Sentence encoders (`ai.embed`): a BERT encoder read from a sentence-transformers model
//! directory (`config.json`, `model.safetensors` in F32, `tokenizer.json`,
//! `sentence_bert_config.json`, `1_Pooling/config.json`), mean-pooled over the real tokens
//! and optionally L2-normalised, as sentence-transformers runs
//! `sentence-transformers/all-MiniLM-L6-v2`.
//!
//! The tokenizer is the `tokenizers` crate set up as sentence-transformers sets it up:
//! truncation at `max_seq_length` from `sentence_bert_config.json` and no fixed padding
//! (the shipped `tokenizer.json` pads and truncates at 128; the library overrides both).
//!
//! The CPU path here runs the sequences of a batch packed one after another (no padding):
//! every projection is one GEMM over all tokens of the batch, attention runs per sequence
//! and head over that sequence's tokens only. That is the padded computation with its
//! masked keys (weight exactly 0 after the softmax) and its padded rows (pooled with weight
//! 0) left out, so it gives the same embeddings as the GPU path, which pads per batch.

use std::path::Path;
use std::sync::atomic::Ordering;

use gemm::Parallelism;
use rayon::prelude::*;
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use crate::cpu::{gemm_view, CpuPool, View};
use crate::model::{ModelError, NEXT_ID};

fn err(msg: impl Into<String>) -> ModelError {
    ModelError(msg.into())
}

/// Largest dimensions accepted from a `config.json` (bounds the work one header causes
/// and keeps every GPU index within 32 bits).
const MAX_HIDDEN: usize = 8192;
const MAX_LAYERS: usize = 64;
const MAX_POSITIONS: usize = 8192;

/// The part of a BERT `config.json` the encoder uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BertConfig {
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub vocab: usize,
    pub eps: f32,
}

#[derive(Deserialize)]
struct RawConfig {
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

#[derive(Deserialize)]
struct SbertConfig {
    max_seq_length: usize,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// One transformer layer's weights, row-major `[out, in]` as in the file (PyTorch
/// `nn.Linear`), with Q, K and V fused into one `[3·hidden, hidden]` matrix.
#[derive(Debug)]
pub(crate) struct EncoderLayer {
    pub(crate) qkv_w: Vec<f32>,
    pub(crate) qkv_b: Vec<f32>,
    pub(crate) out_w: Vec<f32>,
    pub(crate) out_b: Vec<f32>,
    pub(crate) ln1_g: Vec<f32>,
    pub(crate) ln1_b: Vec<f32>,
    pub(crate) up_w: Vec<f32>,
    pub(crate) up_b: Vec<f32>,
    pub(crate) down_w: Vec<f32>,
    pub(crate) down_b: Vec<f32>,
    pub(crate) ln2_g: Vec<f32>,
    pub(crate) ln2_b: Vec<f32>,
}

/// A loaded sentence encoder. Like [`crate::Model`], each value has a process-unique id
/// under which the scheduler batches requests and keeps device weights.
pub struct Encoder {
    id: u64,
    name: String,
    cfg: BertConfig,
    max_seq: usize,
    tokenizer: Tokenizer,
    pub(crate) word: Vec<f32>,
    pub(crate) pos: Vec<f32>,
    /// Token type 0's embedding (single sentences only use type 0).
    pub(crate) type0: Vec<f32>,
    pub(crate) emb_ln_g: Vec<f32>,
    pub(crate) emb_ln_b: Vec<f32>,
    pub(crate) layers: Vec<EncoderLayer>,
    bytes: u64,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("cfg", &self.cfg)
            .field("max_seq", &self.max_seq)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// One input after tokenization: `[CLS] … [SEP]` ids, cut at the encoder's
/// `max_seq_length` when longer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub truncated: bool,
}

fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, file: &str) -> Result<T, ModelError> {
    let path = dir.join(file);
    let text =
        std::fs::read_to_string(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))
}

struct Tensors<'a> {
    st: safetensors::SafeTensors<'a>,
}

impl Tensors<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let t = self
            .st
            .tensor(name)
            .map_err(|_| err(format!("tensor `{name}` is not in model.safetensors")))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(err(format!(
                "tensor `{name}` is {:?}, only F32 is supported",
                t.dtype()
            )));
        }
        if t.shape() != shape {
            return Err(err(format!(
                "tensor `{name}` has shape {:?}, the config implies {shape:?}",
                t.shape()
            )));
        }
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if v.iter().any(|x| !x.is_finite()) {
            return Err(err(format!("tensor `{name}` holds a non-finite value")));
        }
        Ok(v)
    }
}

impl Encoder {
    /// Loads the model directory `dir`, to be addressed as `name`. Every failure is a
    /// message naming the file at fault.
    pub fn load(dir: &Path, name: &str) -> Result<Encoder, ModelError> {
        let raw: RawConfig = read_json(dir, "config.json")?;
        if raw.model_type.as_deref().is_some_and(|t| t != "bert") {
            return Err(err(format!(
                "config.json: model_type {:?}; only \"bert\" encoders are supported",
                raw.model_type
            )));
        }
        if raw
            .position_embedding_type
            .as_deref()
            .is_some_and(|t| t != "absolute")
        {
            return Err(err(
                "config.json: only absolute position embeddings are supported",
            ));
        }
        if raw.hidden_act != "gelu" {
            return Err(err(format!(
                "config.json: hidden_act {:?}; only \"gelu\" is supported",
                raw.hidden_act
            )));
        }
        let cfg = BertConfig {
            hidden: raw.hidden_size,
            heads: raw.num_attention_heads,
            layers: raw.num_hidden_layers,
            intermediate: raw.intermediate_size,
            max_positions: raw.max_position_embeddings,
            vocab: raw.vocab_size,
            eps: raw.layer_norm_eps as f32,
        };
        let ok = (1..=MAX_HIDDEN).contains(&cfg.hidden)
            && (1..=MAX_HIDDEN * 8).contains(&cfg.intermediate)
            && (1..=MAX_LAYERS).contains(&cfg.layers)
            && (1..=MAX_POSITIONS).contains(&cfg.max_positions)
            && (1..=1 << 22).contains(&cfg.vocab)
            && cfg.heads >= 1
            && cfg.hidden % cfg.heads == 0
            && cfg.eps.is_finite()
            && cfg.eps > 0.0;
        if !ok {
            return Err(err(format!("config.json: unsupported dimensions {cfg:?}")));
        }
        let sbert: SbertConfig = read_json(dir, "sentence_bert_config.json")?;
        let max_seq = sbert.max_seq_length;
        if !(3..=cfg.max_positions).contains(&max_seq) {
            return Err(err(format!(
                "sentence_bert_config.json: max_seq_length {max_seq} outside 3..={}",
                cfg.max_positions
            )));
        }
        // Mean pooling is what this encoder does; refuse a model that asks for another.
        if dir.join("1_Pooling/config.json").exists() {
            let p: PoolingConfig = read_json(dir, "1_Pooling/config.json")?;
            if !p.pooling_mode_mean_tokens
                || p.pooling_mode_cls_token
                || p.pooling_mode_max_tokens
                || p.pooling_mode_mean_sqrt_len_tokens
            {
                return Err(err(
                    "1_Pooling/config.json: only mean pooling (pooling_mode_mean_tokens) is supported",
                ));
            }
        }
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| err(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq,
                ..TruncationParams::default()
            }))
            .map_err(|e| err(format!("tokenizer.json: truncation: {e}")))?;

        let bytes = std::fs::read(dir.join("model.safetensors"))
            .map_err(|e| err(format!("model.safetensors: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| err(format!("model.safetensors: {e}")))?;
        let t = Tensors { st };
        // Checkpoints saved from BertModel have no prefix; from BertFor* they have `bert.`.
        let pre = if t
            .st
            .tensor("bert.embeddings.word_embeddings.weight")
            .is_ok()
        {
            "bert."
        } else {
            ""
        };
        let (h, i) = (cfg.hidden, cfg.intermediate);
        let types =
            t.st.tensor(&format!("{pre}embeddings.token_type_embeddings.weight"))
                .map(|v| v.shape().first().copied().unwrap_or(0))
                .unwrap_or(0)
                .max(1);
        let type_all = t.get(
            &format!("{pre}embeddings.token_type_embeddings.weight"),
            &[types, h],
        )?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("{pre}encoder.layer.{l}.");
            let g = |n: &str, s: &[usize]| t.get(&format!("{p}{n}"), s);
            let mut qkv_w = g("attention.self.query.weight", &[h, h])?;
            qkv_w.extend(g("attention.self.key.weight", &[h, h])?);
            qkv_w.extend(g("attention.self.value.weight", &[h, h])?);
            let mut qkv_b = g("attention.self.query.bias", &[h])?;
            qkv_b.extend(g("attention.self.key.bias", &[h])?);
            qkv_b.extend(g("attention.self.value.bias", &[h])?);
            layers.push(EncoderLayer {
                qkv_w,
                qkv_b,
                out_w: g("attention.output.dense.weight", &[h, h])?,
                out_b: g("attention.output.dense.bias", &[h])?,
                ln1_g: g("attention.output.LayerNorm.weight", &[h])?,
                ln1_b: g("attention.output.LayerNorm.bias", &[h])?,
                up_w: g("intermediate.dense.weight", &[i, h])?,
                up_b: g("intermediate.dense.bias", &[i])?,
                down_w: g("output.dense.weight", &[h, i])?,
                down_b: g("output.dense.bias", &[h])?,
                ln2_g: g("output.LayerNorm.weight", &[h])?,
                ln2_b: g("output.LayerNorm.bias", &[h])?,
            });
        }
        let e = |n: &str, s: &[usize]| t.get(&format!("{pre}embeddings.{n}"), s);
        let mut enc = Encoder {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            cfg,
            max_seq,
            tokenizer,
            word: e("word_embeddings.weight", &[cfg.vocab, h])?,
            pos: e("position_embeddings.weight", &[cfg.max_positions, h])?,
            type0: type_all[..h].to_vec(),
            emb_ln_g: e("LayerNorm.weight", &[h])?,
            emb_ln_b: e("LayerNorm.bias", &[h])?,
            layers,
            bytes: 0,
        };
        enc.bytes = enc.weight_values() as u64 * 4;
        Ok(enc)
    }

    fn weight_values(&self) -> usize {
        let per_layer = |l: &EncoderLayer| {
            [
                &l.qkv_w, &l.qkv_b, &l.out_w, &l.out_b, &l.ln1_g, &l.ln1_b, &l.up_w, &l.up_b,
                &l.down_w, &l.down_b, &l.ln2_g, &l.ln2_b,
            ]
            .iter()
            .map(|v| v.len())
            .sum::<usize>()
        };
        self.word.len()
            + self.pos.len()
            + self.type0.len()
            + self.emb_ln_g.len()
            + self.emb_ln_b.len()
            + self.layers.iter().map(per_layer).sum::<usize>()
    }

    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn config(&self) -> BertConfig {
        self.cfg
    }
    /// Embedding width (`dim` of the result).
    pub fn dim(&self) -> usize {
        self.cfg.hidden
    }
    /// Tokens per input at most, `[CLS]` and `[SEP]` included.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq
    }
    /// Bytes of weights (what a device copy takes).
    pub fn weight_bytes(&self) -> u64 {
        self.bytes
    }

    /// Device bytes one padded batch of `rows` sequences of `len` tokens needs besides the
    /// weights: hidden states, the fused QKV, attention context, the FFN's wide activation
    /// and one score matrix per head, plus the token ids and mask.
    pub fn activation_bytes(&self, rows: usize, len: usize) -> u64 {
        let (r, l) = (rows as u64, len as u64);
        let (h, i, nh) = (
            self.cfg.hidden as u64,
            self.cfg.intermediate as u64,
            self.cfg.heads as u64,
        );
        let per_token = 3 * h + 3 * h + h + i + 2;
        (r * l * per_token + r * nh * l * l + r * h) * 4
    }

    /// Tokenizes one input. Errors only if the tokenizer itself fails (it accepts any
    /// UTF-8 text, the empty string included, which becomes `[CLS] [SEP]`).
    pub fn tokenize(&self, text: &str) -> Result<Tokens, ModelError> {
        let enc = self
            .tokenizer
            .encode_fast(text, true)
            .map_err(|e| err(format!("tokenizer: {e}")))?;
        let ids = enc.get_ids().to_vec();
        if ids.is_empty() || ids.len() > self.max_seq {
            return Err(err(format!(
                "tokenizer gave {} tokens (expected 1..={})",
                ids.len(),
                self.max_seq
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab) {
            return Err(err(format!(
                "tokenizer gave id {bad}, beyond the vocabulary of {}",
                self.cfg.vocab
            )));
        }
        Ok(Tokens {
            ids,
            truncated: !enc.get_overflowing().is_empty(),
        })
    }

    /// Embeds tokenized sequences on the calling thread: row-major `[seqs, dim]`.
    pub fn embed_cpu(&self, seqs: &[&[u32]], normalize: bool) -> Vec<f32> {
        embed_cpu(self, seqs, &vec![normalize; seqs.len()], None)
    }
}

/// Layer norm of each `h`-wide row in place: `(x - mean) / sqrt(var + eps) · g + b`.
pub(crate) fn layer_norm_rows(x: &mut [f32], g: &[f32], b: &[f32], eps: f32) {
    let h = g.len();
    for row in x.chunks_mut(h) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for ((v, &g), &b) in row.iter_mut().zip(g).zip(b) {
            *v = ((*v as f64 - mean) * inv) as f32 * g + b;
        }
    }
}

/// Exact GELU in f32 (`erff`): the encoder applies it to every FFN activation, where the
/// f64 form of [`crate::gelu`] would cost a third of the layer.
#[inline]
fn gelu32(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Rows of `h` values: `dst` pre-loaded with `bias` on each row plus `resid` (if any).
fn preload(rows: usize, bias: &[f32], resid: Option<&[f32]>) -> Vec<f32> {
    let n = bias.len();
    let mut y = Vec::with_capacity(rows * n);
    match resid {
        Some(r) => {
            for row in r.chunks(n) {
                y.extend(row.iter().zip(bias).map(|(a, b)| a + b));
            }
        }
        None => {
            for _ in 0..rows {
                y.extend_from_slice(bias);
            }
        }
    }
    y
}

/// `x[rows, k] · Wᵀ + b (+ resid)` with `W` row-major `[n, k]`.
fn linear(
    x: &[f32],
    rows: usize,
    w: &[f32],
    b: &[f32],
    resid: Option<&[f32]>,
    pool: Option<&CpuPool>,
) -> Vec<f32> {
    let n = b.len();
    let k = w.len() / n;
    let mut y = preload(rows, b, resid);
    let run = |y: &mut Vec<f32>, par| {
        gemm_view(
            y,
            0,
            n,
            (rows, n, k),
            View {
                data: x,
                off: 0,
                rs: k,
                cs: 1,
            },
            // Wᵀ read from row-major W: element (kk, j) is W[j, kk].
            View {
                data: w,
                off: 0,
                rs: 1,
                cs: k,
            },
            true,
            1.0,
            par,
        )
    };
    match pool {
        Some(p) => {
            let par = p.par_for(rows * n * k);
            p.install(|| run(&mut y, par))
        }
        None => run(&mut y, Parallelism::None),
    }
    y
}

/// One head of one sequence: softmax(Q Kᵀ / √d) V over the sequence's `len` tokens
/// starting at row `off` of the fused QKV matrix. Returns `[len, d]`.
fn attend(qkv: &[f32], h: usize, d: usize, head: usize, off: usize, len: usize) -> Vec<f32> {
    let rs = 3 * h;
    let mut scores = vec![0.0f32; len * len];
    gemm_view(
        &mut scores,
        0,
        len,
        (len, len, d),
        View {
            data: qkv,
            off: off * rs + head * d,
            rs,
            cs: 1,
        },
        // Kᵀ: element (dd, j) is K[j, dd].
        View {
            data: qkv,
            off: off * rs + h + head * d,
            rs: 1,
            cs: rs,
        },
        false,
        1.0 / (d as f32).sqrt(),
        Parallelism::None,
    );
    for row in scores.chunks_mut(len) {
        crate::model::softmax_in_place(row);
    }
    let mut ctx = vec![0.0f32; len * d];
    gemm_view(
        &mut ctx,
        0,
        d,
        (len, d, len),
        View {
            data: &scores,
            off: 0,
            rs: len,
            cs: 1,
        },
        View {
            data: qkv,
            off: off * rs + 2 * h + head * d,
            rs,
            cs: 1,
        },
        false,
        1.0,
        Parallelism::None,
    );
    ctx
}

/// The CPU encoder (see the module doc): row-major `[seqs.len(), hidden]`; row `i` is
/// L2-normalised when `normalize[i]`.
pub(crate) fn embed_cpu(
    enc: &Encoder,
    seqs: &[&[u32]],
    normalize: &[bool],
    pool: Option<&CpuPool>,
) -> Vec<f32> {
    let BertConfig {
        hidden: h,
        heads,
        eps,
        ..
    } = enc.cfg;
    let d = h / heads;
    let mut offs = Vec::with_capacity(seqs.len());
    let mut total = 0usize;
    for s in seqs {
        offs.push(total);
        total += s.len();
    }
    // Embeddings: word + position + token type 0, then layer norm.
    let mut x = Vec::with_capacity(total * h);
    for s in seqs {
        for (p, &id) in s.iter().enumerate() {
            let w = &enc.word[id as usize * h..(id as usize + 1) * h];
            let pe = &enc.pos[p * h..(p + 1) * h];
            x.extend(
                w.iter()
                    .zip(pe)
                    .zip(&enc.type0)
                    .map(|((a, b), c)| a + b + c),
            );
        }
    }
    layer_norm_rows(&mut x, &enc.emb_ln_g, &enc.emb_ln_b, eps);
    let jobs: Vec<(usize, usize)> = (0..seqs.len())
        .flat_map(|s| (0..heads).map(move |hd| (s, hd)))
        .collect();
    for l in &enc.layers {
        let qkv = linear(&x, total, &l.qkv_w, &l.qkv_b, None, pool);
        let run_head = |&(s, hd): &(usize, usize)| attend(&qkv, h, d, hd, offs[s], seqs[s].len());
        let heads_out: Vec<Vec<f32>> = match pool {
            Some(p) if total * total.min(enc.max_seq) * h >= 1 << 20 => {
                p.install(|| jobs.par_iter().map(run_head).collect())
            }
            _ => jobs.iter().map(run_head).collect(),
        };
        let mut ctx = vec![0.0f32; total * h];
        for (&(s, hd), out) in jobs.iter().zip(&heads_out) {
            for (i, row) in out.chunks(d).enumerate() {
                let at = (offs[s] + i) * h + hd * d;
                ctx[at..at + d].copy_from_slice(row);
            }
        }
        let mut a = linear(&ctx, total, &l.out_w, &l.out_b, Some(&x), pool);
        layer_norm_rows(&mut a, &l.ln1_g, &l.ln1_b, eps);
        let mut up = linear(&a, total, &l.up_w, &l.up_b, None, pool);
        let act = |v: &mut f32| *v = gelu32(*v);
        match pool {
            Some(p) if up.len() >= 1 << 15 => p.install(|| up.par_iter_mut().for_each(act)),
            _ => up.iter_mut().for_each(act),
        }
        let mut y = linear(&up, total, &l.down_w, &l.down_b, Some(&a), pool);
        layer_norm_rows(&mut y, &l.ln2_g, &l.ln2_b, eps);
        x = y;
    }
    // Mean over each sequence's tokens (all of them real: nothing is padded here).
    let mut out = vec![0.0f32; seqs.len() * h];
    for (s, o) in out.chunks_mut(h).enumerate() {
        let len = seqs[s].len();
        let mut acc = vec![0.0f64; h];
        for row in x[offs[s] * h..(offs[s] + len) * h].chunks(h) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v as f64;
            }
        }
        let inv = 1.0 / len.max(1) as f64;
        for (o, a) in o.iter_mut().zip(&acc) {
            *o = (a * inv) as f32;
        }
        if normalize.get(s).copied().unwrap_or(false) {
            l2_normalize(o);
        }
    }
    out
}

/// Scales `v` to unit length (left as is when all zero), as sentence-transformers'
/// `Normalize` does (its norm is clamped at 1e-12).
pub(crate) fn l2_normalize(v: &mut [f32]) {
    let n = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let inv = 1.0 / n.max(1e-12);
    for x in v {
        *x = (*x as f64 * inv) as f32;
    }
}
