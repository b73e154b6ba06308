//! The model file format: what is refused and why, and that the shipped Python writer
//! produces files this crate reads, with the same outputs.

use std::collections::HashMap;
use std::process::Command;

use beamline_gpu::{Activation, Layer, Model};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A file with the given tensors (name, shape, values) and metadata.
fn file(tensors: &[(&str, Vec<usize>, Vec<f32>)], meta: Option<&[(&str, &str)]>) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.to_string(), s.clone(), bytes(v)))
        .collect();
    let views = data.iter().map(|(n, s, d)| {
        (
            n.clone(),
            TensorView::new(Dtype::F32, s.clone(), d).expect("view"),
        )
    });
    let meta = meta.map(|m| {
        m.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>()
    });
    safetensors::serialize(views, meta).expect("serialize")
}

fn refused(bytes: &[u8]) -> String {
    Model::from_safetensors(bytes).expect_err("refused").0
}

const TWO: &str =
    r#"[{"weight":"a.w","bias":"a.b","activation":"relu"},{"weight":"b.w","bias":"b.b"}]"#;

fn two_layer_tensors(second_in: usize) -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
    vec![
        ("a.w", vec![3, 2], vec![0.1; 6]),
        ("a.b", vec![3], vec![0.0; 3]),
        ("b.w", vec![1, second_in], vec![0.2; second_in]),
        ("b.b", vec![1], vec![0.0]),
    ]
}

#[test]
fn a_good_file_with_custom_tensor_names() {
    let m = Model::from_safetensors(&file(&two_layer_tensors(3), Some(&[("layers", TWO)])))
        .expect("parses");
    assert_eq!((m.input_dim(), m.output_dim(), m.layers().len()), (2, 1, 2));
    assert_eq!(
        m.layers()[1].activation(),
        Activation::None,
        "activation defaults to none"
    );
}

#[test]
fn not_safetensors() {
    assert!(refused(b"this is not a model").contains("not a safetensors file"));
    assert!(refused(&[]).contains("not a safetensors file"));
    // A header length pointing past the end.
    let mut b = 1_000_000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert!(refused(&b).contains("not a safetensors file"));
}

#[test]
fn missing_metadata_or_layer_list() {
    let e = refused(&file(&two_layer_tensors(3), None));
    assert!(e.contains("__metadata__"), "{e}");
    let e = refused(&file(
        &two_layer_tensors(3),
        Some(&[("format", beamline_gpu::FORMAT)]),
    ));
    assert!(e.contains("no `layers`"), "{e}");
    let e = refused(&file(
        &two_layer_tensors(3),
        Some(&[("layers", "not json")]),
    ));
    assert!(e.contains("`layers`"), "{e}");
    let e = refused(&file(
        &two_layer_tensors(3),
        Some(&[("layers", TWO), ("format", "onnx")]),
    ));
    assert!(e.contains("format"), "{e}");
}

#[test]
fn shape_mismatch_between_layers() {
    let e = refused(&file(&two_layer_tensors(4), Some(&[("layers", TWO)])));
    assert!(
        e.contains("shape mismatch") && e.contains("layer 1 takes 4") && e.contains("gives 3"),
        "{e}"
    );
}

#[test]
fn bad_layers() {
    let unknown = r#"[{"weight":"a.w","bias":"a.b","activation":"swish"}]"#;
    assert!(
        refused(&file(&two_layer_tensors(3), Some(&[("layers", unknown)])))
            .contains("unknown activation")
    );
    let missing = r#"[{"weight":"zz","bias":"a.b"}]"#;
    assert!(
        refused(&file(&two_layer_tensors(3), Some(&[("layers", missing)])))
            .contains("`zz` is not in the file")
    );
    let bias_swapped = r#"[{"weight":"a.w","bias":"b.b"}]"#;
    assert!(refused(&file(
        &two_layer_tensors(3),
        Some(&[("layers", bias_swapped)])
    ))
    .contains("expected [3]"));
    let vector_weight = r#"[{"weight":"a.b","bias":"a.b"}]"#;
    assert!(refused(&file(
        &two_layer_tensors(3),
        Some(&[("layers", vector_weight)])
    ))
    .contains("expected [out, in]"));
    let softmax_first =
        r#"[{"weight":"a.w","bias":"a.b","activation":"softmax"},{"weight":"b.w","bias":"b.b"}]"#;
    assert!(refused(&file(
        &two_layer_tensors(3),
        Some(&[("layers", softmax_first)])
    ))
    .contains("last layer"));
    assert!(refused(&file(&[], Some(&[("layers", "[]")]))).contains("no layers"));
    let t = vec![
        ("a.w", vec![1, 1], vec![f32::NAN]),
        ("a.b", vec![1], vec![0.0]),
    ];
    let one = r#"[{"weight":"a.w","bias":"a.b"}]"#;
    assert!(refused(&file(&t, Some(&[("layers", one)]))).contains("non-finite"));
}

#[test]
fn other_dtypes_are_refused() {
    let w = vec![0u8; 4 * 2];
    let b = vec![0u8; 2 * 2];
    let views = vec![
        (
            "a.w".to_string(),
            TensorView::new(Dtype::F16, vec![2, 2], &w).expect("view"),
        ),
        (
            "a.b".to_string(),
            TensorView::new(Dtype::F16, vec![2], &b).expect("view"),
        ),
    ];
    let meta = HashMap::from([(
        "layers".to_string(),
        r#"[{"weight":"a.w","bias":"a.b"}]"#.to_string(),
    )]);
    let bytes = safetensors::serialize(views, Some(meta)).expect("serialize");
    assert!(refused(&bytes).contains("only F32"));
}

#[test]
fn written_files_read_back_identically() {
    let m = Model::new(vec![
        Layer::new(
            2,
            2,
            vec![1.0, -2.0, 0.5, 3.0],
            vec![0.25, -0.5],
            Activation::Gelu,
        )
        .expect("l0"),
        Layer::new(2, 3, vec![1.0; 6], vec![0.0, 1.0, 2.0], Activation::Softmax).expect("l1"),
    ])
    .expect("model");
    let back = Model::from_safetensors(&m.to_safetensors()).expect("parses");
    let x = [0.3, -0.7, 1.5, 2.0];
    assert_eq!(
        m.forward_cpu(&x, 2).expect("a"),
        back.forward_cpu(&x, 2).expect("b")
    );
}

/// `gpu/scripts/make_model.py` (python3, standard library only) writes a file and prints
/// its own pure-Python forward pass; both must agree with this crate.
#[test]
fn python_writer_produces_a_readable_model() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/make_model.py");
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not installed: skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.safetensors");
    let out = Command::new("python3")
        .args([
            script,
            "--out",
            path.to_str().expect("utf8"),
            "--sizes",
            "5,7,6,3",
            "--activations",
            "gelu,tanh,softmax",
        ])
        .args(["--seed", "7", "--check-input", "0.5,-1,2,0,0.25"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Model::from_safetensors(&std::fs::read(&path).expect("written")).expect("parses");
    assert_eq!((m.input_dim(), m.output_dim(), m.layers().len()), (5, 3, 3));
    assert_eq!(m.layers()[2].activation(), Activation::Softmax);
    let printed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("script prints JSON");
    let want: Vec<f64> = printed["outputs"][0]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    let got = m
        .forward_cpu(&[0.5, -1.0, 2.0, 0.0, 0.25], 1)
        .expect("runs");
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}
