//! The CPU path against numbers worked out by hand, and against a naive reference.

use beamline_gpu::{Activation, Layer, Model};
use proptest::prelude::*;

fn close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}

/// Layer 0 (2 → 3, relu): W0 = [[1, 2], [-1, 0.5], [0, -3]], b0 = [0.5, -1, 2].
/// Layer 1 (3 → 2, none): W1 = [[1, -1, 0.5], [2, 0, -1]], b1 = [0, 1].
///
/// x = [1, 2]:     z0 = [1+4+0.5, -1+1-1, 0-6+2] = [5.5, -1, -4] → relu [5.5, 0, 0]
///                 z1 = [5.5, 11+1] = [5.5, 12]
/// x = [-1, 0.5]:  z0 = [-1+1+0.5, 1+0.25-1, -1.5+2] = [0.5, 0.25, 0.5] (all ≥ 0)
///                 z1 = [0.5-0.25+0.25, 1-0.5+1] = [0.5, 1.5]
pub fn hand_network() -> Model {
    Model::new(vec![
        Layer::new(
            2,
            3,
            vec![1.0, 2.0, -1.0, 0.5, 0.0, -3.0],
            vec![0.5, -1.0, 2.0],
            Activation::Relu,
        )
        .expect("l0"),
        Layer::new(
            3,
            2,
            vec![1.0, -1.0, 0.5, 2.0, 0.0, -1.0],
            vec![0.0, 1.0],
            Activation::None,
        )
        .expect("l1"),
    ])
    .expect("model")
}

#[test]
fn two_layer_network_matches_hand_computation() {
    let m = hand_network();
    let out = m.forward_cpu(&[1.0, 2.0, -1.0, 0.5], 2).expect("runs");
    assert_eq!(out, vec![5.5, 12.0, 0.5, 1.5]);
    // Also after a trip through the file format.
    let back = Model::from_safetensors(&m.to_safetensors()).expect("parses");
    assert_eq!(
        back.forward_cpu(&[1.0, 2.0], 1).expect("runs"),
        vec![5.5, 12.0]
    );
}

fn identity(act: Activation) -> Model {
    Model::new(vec![Layer::new(
        2,
        2,
        vec![1.0, 0.0, 0.0, 1.0],
        vec![0.0, 0.0],
        act,
    )
    .expect("layer")])
    .expect("model")
}

#[test]
fn each_activation() {
    let x = [1.0, -1.0, 0.0, 2.0];
    let run = |a| identity(a).forward_cpu(&x, 2).expect("runs");
    assert_eq!(run(Activation::None), x.to_vec());
    assert_eq!(run(Activation::Relu), vec![1.0, 0.0, 0.0, 2.0]);
    // tanh(1) = 0.7615942, tanh(2) = 0.9640276
    close(
        &run(Activation::Tanh),
        &[0.761_594_2, -0.761_594_2, 0.0, 0.964_027_6],
        1e-6,
    );
    // gelu(x) = x·Φ(x): Φ(1) = 0.8413447, Φ(-1) = 0.1586553, Φ(2) = 0.9772499
    close(
        &run(Activation::Gelu),
        &[0.841_344_7, -0.158_655_3, 0.0, 1.954_499_7],
        1e-6,
    );
    // softmax([1, -1]) = [e/(e+1/e), …] = [0.8807971, 0.1192029]; softmax([0, 2]) is the mirror
    close(
        &run(Activation::Softmax),
        &[0.880_797_1, 0.119_202_9, 0.119_202_9, 0.880_797_1],
        1e-6,
    );
}

#[test]
fn softmax_is_stable_for_large_logits() {
    let out = identity(Activation::Softmax)
        .forward_cpu(&[1000.0, 999.0], 1)
        .expect("runs");
    close(&out, &[0.731_058_6, 0.268_941_4], 1e-6);
}

/// y = act(x·Wᵀ + b), three nested loops in f64 (erf from `libm`; the GELU values
/// themselves are checked by hand in `each_activation`).
fn naive(m: &Model, x: &[f32], rows: usize) -> Vec<f64> {
    let mut cur: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for l in m.layers() {
        let (k, n) = (l.in_dim(), l.out_dim());
        let mut next = vec![0.0f64; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let mut acc = l.bias()[j] as f64;
                for i in 0..k {
                    acc += cur[r * k + i] * l.weight()[j * k + i] as f64;
                }
                next[r * n + j] = match l.activation() {
                    Activation::Relu => acc.max(0.0),
                    Activation::Tanh => acc.tanh(),
                    Activation::Gelu => {
                        0.5 * acc * (1.0 + libm::erf(acc / std::f64::consts::SQRT_2))
                    }
                    Activation::None | Activation::Softmax => acc,
                };
            }
            if l.activation() == Activation::Softmax {
                let row = &mut next[r * n..(r + 1) * n];
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
                row.iter_mut().for_each(|v| *v = (*v - max).exp() / sum);
            }
        }
        cur = next;
    }
    cur
}

fn arb_model() -> impl Strategy<Value = (Vec<usize>, Vec<u8>, u64)> {
    (
        prop::collection::vec(1usize..12, 2..5),
        prop::collection::vec(0u8..4, 4),
        any::<u64>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_network_matches_naive_reference((dims, acts, seed) in arb_model(), rows in 1usize..9, softmax_last in any::<bool>()) {
        let mut s = seed | 1;
        let mut rnd = move || {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let n_layers = dims.len() - 1;
        let mut layers = Vec::new();
        for i in 0..n_layers {
            let (k, n) = (dims[i], dims[i + 1]);
            let act = if i == n_layers - 1 && softmax_last {
                Activation::Softmax
            } else {
                [Activation::None, Activation::Relu, Activation::Gelu, Activation::Tanh][acts[i] as usize]
            };
            let w = (0..k * n).map(|_| rnd()).collect();
            let b = (0..n).map(|_| rnd()).collect();
            layers.push(Layer::new(k, n, w, b, act).expect("layer"));
        }
        let m = Model::new(layers).expect("model");
        let x: Vec<f32> = (0..rows * dims[0]).map(|_| rnd() * 2.0).collect();
        let got = m.forward_cpu(&x, rows).expect("runs");
        let want = naive(&m, &x, rows);
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert!((*g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0), "{} vs {}", g, w);
        }
    }
}
