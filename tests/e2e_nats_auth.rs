//! The worker against a nats-server that demands authentication: user/password, token,
//! NKey, a credentials file (operator/account/user JWTs made here), TLS with a test CA.
//! In every mode one fs.put completes end to end; wrong credentials keep `/_health` at 503
//! with the reason in the log; no secret reaches the log (RUST_LOG=debug) or `/metrics`.
//! Each test writes a server config file holding only the authorization/TLS blocks (the
//! harness passes address, port and JetStream on the command line).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use beamline_testkit::http_client::wait_health;
use beamline_testkit::listener::Listener;
use beamline_testkit::prelude::*;
use beamline_testkit::tls::TestPki;
use serde_json::{json, Value};

/// Verbose enough to show everything the worker and its NATS client say while connecting
/// (async_nats is held at WARN unless named, so it is named).
const VERBOSE: &str = "debug,async_nats=trace";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// A nats-server with `conf` as its config file (kept in `dir`).
fn server(dir: &Path, conf: &str) -> Nats {
    let path = write(dir, "server.conf", conf);
    Nats::start_with(&["-c", path.to_str().expect("utf-8 path")])
}

/// Sends one fs.put through `listener` and checks it succeeded and landed on disk.
async fn put_round_trip(listener: &Listener, worker: &Worker, id: &str) {
    let tenant = "auth";
    listener
        .assign(&assignment(
            id,
            tenant,
            json!({"type":"fs.put","path":format!("out/{id}.txt"),"content":"hello over auth"}),
        ))
        .await;
    let ack = listener.wait_for(ACK, id, Duration::from_secs(15)).await;
    assert_eq!(ack["status"], "accepted", "{ack}");
    let r = listener.result(id).await;
    assert_result_shape(&r);
    assert_eq!(
        r["status"],
        "success",
        "{r}\nworker log:\n{}",
        worker.logs()
    );
    let on_disk = worker.fs_root.join(tenant).join(format!("out/{id}.txt"));
    assert_eq!(
        std::fs::read_to_string(on_disk).expect("file written"),
        "hello over auth"
    );
}

/// No `secret` in the worker's log, `/metrics` or `/_health`.
async fn assert_no_secret(worker: &Worker, secrets: &[&str]) {
    let logs = worker.logs();
    assert!(
        logs.lines().count() > 5,
        "the worker logged at debug level:\n{logs}"
    );
    let metrics = worker.metrics().await;
    let (_, _, health) = http_get(worker.health_port, "/_health").await;
    for s in secrets {
        assert!(!s.is_empty());
        for (what, text) in [
            ("log", &logs),
            ("/metrics", &metrics),
            ("/_health", &health),
        ] {
            assert!(
                !text.contains(s),
                "secret {s:?} appears in the worker's {what}:\n{text}"
            );
        }
    }
}

#[tokio::test]
async fn user_and_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "pw-Qz81-worker-SECRET";
    let nats = server(
        dir.path(),
        &format!(
            r#"authorization {{
  users = [
    {{ user: "worker", password: "{secret}" }},
    {{ user: "router", password: "router-pw" }}
  ]
}}
"#
        ),
    );
    let worker = Worker::builder(&nats.url())
        .arg("--nats-user=worker")
        .env("NATS_PASSWORD", secret)
        .env("RUST_LOG", VERBOSE)
        .start();
    let listener = Listener::connect(
        &nats.url(),
        async_nats::ConnectOptions::with_user_and_password("router".into(), "router-pw".into()),
    )
    .await;
    listener.ready(Duration::from_secs(20)).await;
    put_round_trip(&listener, &worker, "auth-user-1").await;
    assert_eq!(
        wait_health(worker.health_port, 200, Duration::from_secs(5))
            .await
            .0,
        200
    );
    assert_no_secret(&worker, &[secret]).await;
}

#[tokio::test]
async fn token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "tok-7HhP2-SECRET";
    let nats = server(
        dir.path(),
        &format!("authorization {{\n  token: \"{secret}\"\n}}\n"),
    );
    let worker = Worker::builder(&nats.url())
        .env("NATS_TOKEN", secret)
        .env("RUST_LOG", VERBOSE)
        .start();
    let listener = Listener::connect(
        &nats.url(),
        async_nats::ConnectOptions::with_token(secret.into()),
    )
    .await;
    listener.ready(Duration::from_secs(20)).await;
    put_round_trip(&listener, &worker, "auth-token-1").await;
    assert_no_secret(&worker, &[secret]).await;
}

#[tokio::test]
async fn nkey() {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker_key = nkeys::KeyPair::new_user();
    let router_key = nkeys::KeyPair::new_user();
    let seed = worker_key.seed().expect("seed");
    let nats = server(
        dir.path(),
        &format!(
            "authorization {{\n  users = [\n    {{ nkey: \"{}\" }},\n    {{ nkey: \"{}\" }}\n  ]\n}}\n",
            worker_key.public_key(),
            router_key.public_key()
        ),
    );
    let seed_file = write(dir.path(), "worker.nk", &format!("{seed}\n"));
    let worker = Worker::builder(&nats.url())
        .arg(&format!("--nats-nkey-file={}", seed_file.display()))
        .env("RUST_LOG", VERBOSE)
        .start();
    let listener = Listener::connect(
        &nats.url(),
        async_nats::ConnectOptions::with_nkey(router_key.seed().expect("seed")),
    )
    .await;
    listener.ready(Duration::from_secs(20)).await;
    put_round_trip(&listener, &worker, "auth-nkey-1").await;
    assert_no_secret(&worker, &[&seed]).await;
}

// --- Credentials file: decentralized auth with JWTs signed here ----------------------------

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A NATS JWT (v2, `ed25519-nkey`) for `subject`, signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = json!({
        // The server does not check the jti; it only has to be unique.
        "jti": format!("{name}-{}", subject.get(..16).unwrap_or(subject)),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = issuer.sign(input.as_bytes()).expect("sign");
    format!("{input}.{}", b64url(&sig))
}

/// A `.creds` file as `nsc` writes it.
fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

#[tokio::test]
async fn credentials_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let op_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "op",
        json!({"type": "operator", "version": 2}),
    );
    // JetStream is enabled for the account by giving it (unlimited) storage limits.
    let acct_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "app",
        json!({
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
                       "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1},
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account", "version": 2,
        }),
    );
    let user_claims = json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2});
    let worker_user = nkeys::KeyPair::new_user();
    let router_user = nkeys::KeyPair::new_user();
    let worker_seed = worker_user.seed().expect("seed");
    let worker_creds = write(
        dir.path(),
        "worker.creds",
        &creds(
            &nats_jwt(
                &account,
                &worker_user.public_key(),
                "worker",
                user_claims.clone(),
            ),
            &worker_seed,
        ),
    );
    let router_creds = write(
        dir.path(),
        "router.creds",
        &creds(
            &nats_jwt(&account, &router_user.public_key(), "router", user_claims),
            &router_user.seed().expect("seed"),
        ),
    );
    // JetStream needs a system account in operator mode.
    let system = nkeys::KeyPair::new_account();
    let sys_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        json!({"type": "account", "version": 2}),
    );
    let op_file = write(dir.path(), "operator.jwt", &op_jwt);
    let nats = server(
        dir.path(),
        &format!(
            "operator: \"{}\"\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {sys}: \"{sys_jwt}\"\n  {}: \"{acct_jwt}\"\n}}\n",
            op_file.display(),
            account.public_key(),
            sys = system.public_key(),
        ),
    );
    let worker = Worker::builder(&nats.url())
        .arg(&format!("--nats-creds={}", worker_creds.display()))
        .env("RUST_LOG", VERBOSE)
        .start();
    let opts = async_nats::ConnectOptions::with_credentials_file(&router_creds)
        .await
        .expect("router creds");
    let listener = Listener::connect(&nats.url(), opts).await;
    listener.ready(Duration::from_secs(20)).await;
    put_round_trip(&listener, &worker, "auth-creds-1").await;
    // JetStream worked for the account: the result is kept in the output stream.
    let js = async_nats::jetstream::new(listener.client.clone());
    assert!(
        js.stream_by_subject(RESULT).await.is_ok(),
        "results stream exists in the account"
    );
    assert_no_secret(&worker, &[&worker_seed]).await;
}

// --- TLS ------------------------------------------------------------------------------------

/// A test CA and a server certificate for 127.0.0.1/localhost signed by it, as PEM files
/// in `dir`: (<ca_name>.pem, server.pem, server-key.pem).
fn test_pki(dir: &Path, ca_name: &str) -> (PathBuf, PathBuf, PathBuf) {
    TestPki::new(ca_name).write_pem(dir)
}

fn tls_conf(cert: &Path, key: &Path) -> String {
    format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 2\n}}\n",
        cert.display(),
        key.display()
    )
}

#[tokio::test]
async fn tls_with_a_test_ca_by_tls_url_and_by_nats_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = test_pki(dir.path(), "test-ca");
    let nats = server(dir.path(), &tls_conf(&cert, &key));
    let tls_url = format!("tls://127.0.0.1:{}", nats.port);
    let listener = Listener::connect(
        &tls_url,
        async_nats::ConnectOptions::new()
            .add_root_certificates(ca.clone())
            .require_tls(true),
    )
    .await;
    for (n, url) in [(1, tls_url.clone()), (2, nats.url())] {
        let mut worker = Worker::builder(&url)
            .arg(&format!("--nats-tls-ca={}", ca.display()))
            .env("RUST_LOG", VERBOSE)
            .start();
        listener.ready(Duration::from_secs(20)).await;
        put_round_trip(&listener, &worker, &format!("auth-tls-{n}")).await;
        let m = worker.metrics().await;
        assert!(
            m.contains("worker_nats_connected{connection=\"control\"} 1"),
            "{m}"
        );
        // One worker at a time: the next one must not be helped by this one.
        worker.terminate(Duration::from_secs(10));
    }
}

#[tokio::test]
async fn tls_signed_by_another_ca_is_refused_and_the_worker_stays_unhealthy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, cert, key) = test_pki(dir.path(), "real-ca");
    let other = tempfile::tempdir().expect("tempdir");
    let (wrong_ca, _, _) = test_pki(other.path(), "other-ca");
    let nats = server(dir.path(), &tls_conf(&cert, &key));
    let worker = Worker::builder(&format!("tls://127.0.0.1:{}", nats.port))
        .arg(&format!("--nats-tls-ca={}", wrong_ca.display()))
        .start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = wait_health(worker.health_port, 200, Duration::from_millis(500)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("nats_connection"), "{body}");
    // The reason, not only "IO error": the server's certificate is not trusted.
    let end = Instant::now() + Duration::from_secs(5);
    while !worker.logs().contains("certificate") {
        assert!(
            Instant::now() < end,
            "the log says why the TLS handshake failed:\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- Wrong credentials, credentials in the URL ------------------------------------------

#[tokio::test]
async fn a_wrong_password_keeps_the_worker_unhealthy_and_the_log_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = server(
        dir.path(),
        "authorization {\n  users = [ { user: \"worker\", password: \"right-one\" } ]\n}\n",
    );
    let wrong = "wrong-Xy3-SECRET";
    let worker = Worker::builder(&nats.url())
        .arg("--nats-user=worker")
        .env("NATS_PASSWORD", wrong)
        .env("RUST_LOG", VERBOSE)
        .start();
    // Give it time to try (and fail) several times.
    let end = Instant::now() + Duration::from_secs(10);
    while !worker
        .logs()
        .to_ascii_lowercase()
        .contains("authorization violation")
    {
        assert!(
            Instant::now() < end,
            "the log never said why:\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, ctype, body) = http_get(worker.health_port, "/_health").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(ctype, "application/json");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert!(
        v["failing"]
            .as_array()
            .expect("failing")
            .iter()
            .any(|f| f == "nats_connection"),
        "{v}"
    );
    let m = worker.metrics().await;
    assert!(
        m.contains("worker_nats_connected{connection=\"control\"} 0"),
        "{m}"
    );
    assert_no_secret(&worker, &[wrong, "right-one"]).await;
}

/// A password embedded in NATS_URL (`nats://user:pass@host`, a form other NATS clients
/// accept) authenticates the worker and is never logged.
#[tokio::test]
async fn a_user_and_password_in_the_nats_url_are_used_and_never_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = "urlpw-Lm4-SECRET";
    let nats = server(
        dir.path(),
        &format!("authorization {{\n  users = [\n    {{ user: \"worker\", password: \"{pw}\" }},\n    {{ user: \"router\", password: \"router-pw\" }}\n  ]\n}}\n"),
    );
    let worker = Worker::builder(&format!("nats://worker:{pw}@127.0.0.1:{}", nats.port))
        .env("RUST_LOG", VERBOSE)
        .start();
    let (status, body) = wait_health(worker.health_port, 200, Duration::from_secs(10)).await;
    assert_no_secret(&worker, &[pw]).await;
    assert_eq!(
        status, 200,
        "user:password in the URL authenticates: {body}"
    );
    let listener = Listener::connect(
        &nats.url(),
        async_nats::ConnectOptions::with_user_and_password("router".into(), "router-pw".into()),
    )
    .await;
    listener.ready(Duration::from_secs(20)).await;
    put_round_trip(&listener, &worker, "auth-url-1").await;
    assert_no_secret(&worker, &[pw]).await;
}

/// A token embedded in NATS_URL (`nats://token@host`) authenticates the worker and is
/// never logged, not even at the default level.
#[tokio::test]
async fn a_token_in_the_nats_url_is_used_and_never_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = "urltok-Rb9-SECRET";
    let nats = server(
        dir.path(),
        &format!("authorization {{\n  token: \"{token}\"\n}}\n"),
    );
    let worker = Worker::builder(&format!("nats://{token}@127.0.0.1:{}", nats.port)).start();
    let (status, body) = wait_health(worker.health_port, 200, Duration::from_secs(10)).await;
    let logs = worker.logs();
    assert!(
        !logs.contains(token),
        "the token appears in the worker's log at RUST_LOG=info:\n{logs}"
    );
    assert_eq!(status, 200, "a token in the URL authenticates: {body}");
}
