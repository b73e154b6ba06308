//! A throw-away test CA (rcgen) and a server certificate for `127.0.0.1` / `localhost`
//! that it signed: as a rustls server config (HTTPS test servers, ALPN h2 and http/1.1)
//! and as PEM files (nats-server's `tls {}` block).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA named `ca_name` and a server certificate it signed (see the module doc).
#[derive(Debug)]
pub struct TestPki {
    ca_name: String,
    /// The CA's certificate, PEM (what a client trusts).
    pub ca_pem: String,
    /// The server certificate, PEM.
    pub server_pem: String,
    /// The server certificate's private key, PEM (PKCS#8).
    pub server_key_pem: String,
    /// A rustls server config presenting the server certificate; ALPN h2, http/1.1.
    pub server: Arc<rustls::ServerConfig>,
}

impl TestPki {
    pub fn new(ca_name: &str) -> TestPki {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");

        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");

        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(chain, der)
        .expect("server config");
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TestPki {
            ca_name: ca_name.to_owned(),
            ca_pem: ca.pem(),
            server_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
            server: Arc::new(server),
        }
    }

    /// Writes `<ca_name>.pem`, `server.pem` and `server-key.pem` into `dir`; their paths.
    pub fn write_pem(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write pem");
            p
        };
        (
            write(&format!("{}.pem", self.ca_name), &self.ca_pem),
            write("server.pem", &self.server_pem),
            write("server-key.pem", &self.server_key_pem),
        )
    }
}
