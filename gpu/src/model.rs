//! Feed-forward networks stored as safetensors (format described in `gpu/README.md`).
//!
//! A network is a chain of dense layers `y = act(x · Wᵀ + b)`. Each layer's weight is an
//! `F32` tensor of shape `[out, in]` (the PyTorch `nn.Linear` layout) and its bias an `F32`
//! tensor of shape `[out]`; the order of the layers and their activations are the JSON
//! string under the `layers` key of the safetensors `__metadata__`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The value of `__metadata__.format` this crate writes and accepts.
pub const FORMAT: &str = "beamline-ffn/v1";

/// Layers a file may declare (a bound on work done for one header).
pub const MAX_LAYERS: usize = 256;

/// Why a model file cannot be used. Every one of these is the sender's fault (a bad
/// file), so the worker answers them with 1001.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError(pub String);

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ModelError {}

fn err(msg: impl Into<String>) -> ModelError {
    ModelError(msg.into())
}

/// What follows a layer's affine map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// Identity (`"none"`, also accepted as `"linear"`).
    None,
    Relu,
    /// The exact form `0.5·x·(1 + erf(x/√2))` (PyTorch's default `nn.GELU`).
    Gelu,
    Tanh,
    /// Row-wise softmax; only on the last layer.
    Softmax,
}

impl Activation {
    pub const ALL: [Activation; 5] = [
        Activation::None,
        Activation::Relu,
        Activation::Gelu,
        Activation::Tanh,
        Activation::Softmax,
    ];

    pub fn parse(s: &str) -> Option<Activation> {
        Some(match s {
            "none" | "linear" | "identity" => Activation::None,
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "tanh" => Activation::Tanh,
            "softmax" => Activation::Softmax,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Activation::None => "none",
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Tanh => "tanh",
            Activation::Softmax => "softmax",
        }
    }

    /// The element-wise function (identity for softmax, which works on whole rows).
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None | Activation::Softmax => x,
            Activation::Relu => x.max(0.0),
            Activation::Gelu => gelu(x),
            Activation::Tanh => x.tanh(),
        }
    }

    /// The code the GPU kernel switches on.
    pub(crate) fn kernel_code(self) -> i32 {
        match self {
            Activation::None | Activation::Softmax => 0,
            Activation::Relu => 1,
            Activation::Gelu => 2,
            Activation::Tanh => 3,
        }
    }
}

/// Exact GELU, computed in f64 so the CPU path is the accurate side of the GPU comparison.
#[inline]
pub fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))) as f32
}

/// Numerically stable softmax of one row, in place.
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// One dense layer.
#[derive(Debug, Clone)]
pub struct Layer {
    in_dim: usize,
    out_dim: usize,
    /// Row-major `[out, in]`.
    weight: Vec<f32>,
    bias: Vec<f32>,
    activation: Activation,
}

impl Layer {
    /// `weight` is row-major `[out_dim, in_dim]`.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        weight: Vec<f32>,
        bias: Vec<f32>,
        activation: Activation,
    ) -> Result<Layer, ModelError> {
        if in_dim == 0 || out_dim == 0 {
            return Err(err(format!(
                "a layer of shape [{out_dim}, {in_dim}] is empty"
            )));
        }
        let n = in_dim
            .checked_mul(out_dim)
            .ok_or_else(|| err("layer shape overflows"))?;
        if weight.len() != n {
            return Err(err(format!(
                "weight has {} values, shape [{out_dim}, {in_dim}] needs {n}",
                weight.len()
            )));
        }
        if bias.len() != out_dim {
            return Err(err(format!(
                "bias has {} values, the layer has {out_dim} outputs",
                bias.len()
            )));
        }
        if weight.iter().chain(&bias).any(|v| !v.is_finite()) {
            return Err(err("weights contain a non-finite value"));
        }
        Ok(Layer {
            in_dim,
            out_dim,
            weight,
            bias,
            activation,
        })
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
    /// Row-major `[out, in]`.
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }
    pub fn activation(&self) -> Activation {
        self.activation
    }
}

/// One entry of the `layers` metadata list.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerSpec {
    weight: String,
    bias: String,
    #[serde(default = "none_str")]
    activation: String,
}

fn none_str() -> String {
    "none".to_owned()
}

pub(crate) static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A validated feed-forward network. Each value gets a process-unique [`Model::id`]: the
/// scheduler batches requests and caches device weights by it.
#[derive(Debug)]
pub struct Model {
    id: u64,
    layers: Vec<Layer>,
    bytes: u64,
    max_width: usize,
}

impl Model {
    /// Chains `layers`, checking that each one's input width is the previous one's output
    /// width and that softmax, if any, comes last.
    pub fn new(layers: Vec<Layer>) -> Result<Model, ModelError> {
        if layers.is_empty() {
            return Err(err("the network has no layers"));
        }
        if layers.len() > MAX_LAYERS {
            return Err(err(format!(
                "{} layers, at most {MAX_LAYERS} are supported",
                layers.len()
            )));
        }
        for (i, pair) in layers.windows(2).enumerate() {
            if pair[1].in_dim != pair[0].out_dim {
                return Err(err(format!(
                    "shape mismatch: layer {} takes {} inputs but layer {i} gives {}",
                    i + 1,
                    pair[1].in_dim,
                    pair[0].out_dim
                )));
            }
        }
        if let Some(i) = layers[..layers.len() - 1]
            .iter()
            .position(|l| l.activation == Activation::Softmax)
        {
            return Err(err(format!(
                "layer {i}: softmax is only allowed on the last layer"
            )));
        }
        let bytes = layers
            .iter()
            .map(|l| ((l.weight.len() + l.bias.len()) * 4) as u64)
            .sum();
        let max_width = layers
            .iter()
            .map(|l| l.out_dim.max(l.in_dim))
            .max()
            .unwrap_or(1);
        Ok(Model {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            layers,
            bytes,
            max_width,
        })
    }

    /// Parses a safetensors file (format in the crate README).
    pub fn from_safetensors(bytes: &[u8]) -> Result<Model, ModelError> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| err(format!("not a safetensors file ({e})")))?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| err(format!("not a safetensors file ({e})")))?;
        let md = meta.metadata().as_ref().ok_or_else(|| {
            err("no `__metadata__` in the safetensors header (the layer list goes there)")
        })?;
        if let Some(f) = md.get("format") {
            if f != FORMAT {
                return Err(err(format!(
                    "metadata `format` is {f:?}, expected {FORMAT:?}"
                )));
            }
        }
        let list = md.get("layers").ok_or_else(|| {
            err("metadata has no `layers` entry (a JSON list of {weight, bias, activation})")
        })?;
        let specs: Vec<LayerSpec> = serde_json::from_str(list).map_err(|e| {
            err(format!(
                "metadata `layers` is not a list of {{weight, bias, activation}}: {e}"
            ))
        })?;
        if specs.len() > MAX_LAYERS {
            return Err(err(format!(
                "{} layers, at most {MAX_LAYERS} are supported",
                specs.len()
            )));
        }
        let mut layers = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let activation = Activation::parse(&spec.activation).ok_or_else(|| {
                err(format!(
                    "layer {i}: unknown activation {:?} (relu, gelu, tanh, softmax, none)",
                    spec.activation
                ))
            })?;
            let (w, wshape) = f32_tensor(&st, &spec.weight, i)?;
            let (b, bshape) = f32_tensor(&st, &spec.bias, i)?;
            let [out_dim, in_dim] = wshape[..] else {
                return Err(err(format!(
                    "layer {i}: weight `{}` has shape {wshape:?}, expected [out, in]",
                    spec.weight
                )));
            };
            if bshape != [out_dim] {
                return Err(err(format!(
                    "layer {i}: bias `{}` has shape {bshape:?}, expected [{out_dim}]",
                    spec.bias
                )));
            }
            layers.push(
                Layer::new(in_dim, out_dim, w, b, activation)
                    .map_err(|e| err(format!("layer {i}: {e}")))?,
            );
        }
        Model::new(layers)
    }

    /// Writes the model in the format [`Model::from_safetensors`] reads (tensors named
    /// `layers.{i}.weight` / `layers.{i}.bias`).
    pub fn to_safetensors(&self) -> Vec<u8> {
        let mut specs = Vec::new();
        let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let (wn, bn) = (format!("layers.{i}.weight"), format!("layers.{i}.bias"));
            tensors.push((wn.clone(), le_bytes(&l.weight), vec![l.out_dim, l.in_dim]));
            tensors.push((bn.clone(), le_bytes(&l.bias), vec![l.out_dim]));
            specs.push(LayerSpec {
                weight: wn,
                bias: bn,
                activation: l.activation.as_str().to_owned(),
            });
        }
        let views = tensors.iter().map(|(name, data, shape)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .expect("sizes are consistent by construction");
            (name.clone(), view)
        });
        let mut md = HashMap::new();
        md.insert("format".to_owned(), FORMAT.to_owned());
        md.insert(
            "layers".to_owned(),
            serde_json::to_string(&specs).expect("plain structs serialize"),
        );
        safetensors::serialize(views, Some(md)).expect("valid tensors serialize")
    }

    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }
    pub fn input_dim(&self) -> usize {
        self.layers[0].in_dim
    }
    pub fn output_dim(&self) -> usize {
        self.layers[self.layers.len() - 1].out_dim
    }
    /// Bytes of weights and biases (what a device copy takes).
    pub fn weight_bytes(&self) -> u64 {
        self.bytes
    }
    /// Widest layer input or output (sizes the activation buffers).
    pub fn max_width(&self) -> usize {
        self.max_width
    }
    /// Device bytes one batch of `rows` needs besides the weights: the input and two
    /// activation buffers of the widest layer.
    pub fn activation_bytes(&self, rows: usize) -> u64 {
        (rows as u64) * (self.input_dim() as u64 + 2 * self.max_width as u64) * 4
    }
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_tensor(
    st: &safetensors::SafeTensors<'_>,
    name: &str,
    layer: usize,
) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
    let t = st
        .tensor(name)
        .map_err(|_| err(format!("layer {layer}: tensor `{name}` is not in the file")))?;
    if t.dtype() != safetensors::Dtype::F32 {
        return Err(err(format!(
            "layer {layer}: tensor `{name}` is {:?}, only F32 is supported",
            t.dtype()
        )));
    }
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((data, t.shape().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(i: usize, o: usize, act: Activation) -> Layer {
        Layer::new(i, o, vec![0.5; i * o], vec![0.0; o], act).expect("layer")
    }

    #[test]
    fn round_trip_through_safetensors() {
        let m = Model::new(vec![
            layer(3, 4, Activation::Relu),
            layer(4, 2, Activation::Softmax),
        ])
        .expect("model");
        let bytes = m.to_safetensors();
        let back = Model::from_safetensors(&bytes).expect("parses");
        assert_eq!(back.input_dim(), 3);
        assert_eq!(back.output_dim(), 2);
        assert_eq!(back.layers()[1].activation(), Activation::Softmax);
        assert_eq!(back.weight_bytes(), m.weight_bytes());
        assert_ne!(back.id(), m.id());
    }

    #[test]
    fn softmax_only_last() {
        let e = Model::new(vec![
            layer(3, 4, Activation::Softmax),
            layer(4, 2, Activation::None),
        ])
        .expect_err("rejected");
        assert!(e.0.contains("softmax"), "{e}");
    }

    #[test]
    fn gelu_values() {
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_25).abs() < 1e-6);
        assert_eq!(gelu(0.0), 0.0);
    }
}
