//! A TLS front on 127.0.0.1 with a private certificate authority, for the HTTPS tests.
//!
//! [`TestCa`] makes a CA and a server certificate for `127.0.0.1`/`localhost` (rcgen).
//! [`TlsFront`] accepts TLS on a free loopback port and either forwards the decrypted bytes
//! to a plain TCP backend (an S3 server behind a TLS-terminating proxy) or answers every
//! request with one fixed HTTP response (a stand-in API server). It runs on its own thread
//! and stops when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A private CA and a server certificate it signed for 127.0.0.1 and localhost.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    server_der: CertificateDer<'static>,
    server_key: Vec<u8>,
}

impl TestCa {
    /// Generates a fresh CA and server certificate.
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "podvault test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        TestCa {
            ca_pem: ca_cert.pem(),
            server_der: cert.der().clone(),
            server_key: key.serialize_der(),
        }
    }

    /// Writes the CA certificate (PEM) to `path`.
    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, &self.ca_pem).expect("writing the CA bundle");
    }

    fn acceptor(&self) -> TlsAcceptor {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![self.server_der.clone()], key)
            .expect("server TLS config");
        TlsAcceptor::from(Arc::new(config))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// What a [`TlsFront`] does with a connection.
#[derive(Clone)]
pub enum Behind {
    /// Forward to this plain-TCP address.
    Forward(SocketAddr),
    /// Answer every request with this status code and JSON body, then close.
    Respond(u16, String),
}

/// A TLS listener on 127.0.0.1 (see the module docs).
pub struct TlsFront {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFront {
    /// Starts a front with `ca`'s server certificate.
    pub fn start(ca: &TestCa, behind: Behind) -> Self {
        let acceptor = ca.acceptor();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let (acceptor, behind) = (acceptor.clone(), behind.clone());
                            tokio::spawn(async move {
                                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                                match behind {
                                    Behind::Forward(to) => {
                                        if let Ok(mut up) = TcpStream::connect(to).await {
                                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                                        }
                                    }
                                    Behind::Respond(code, body) => {
                                        let mut buf = vec![0u8; 64 * 1024];
                                        let _ = tls.read(&mut buf).await;
                                        let response = format!(
                                            "HTTP/1.1 {code} Test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                            body.len()
                                        );
                                        let _ = tls.write_all(response.as_bytes()).await;
                                        let _ = tls.shutdown().await;
                                    }
                                }
                            });
                        }
                    }
                }
            });
        });
        TlsFront {
            url: format!("https://{addr}"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A kubeconfig for `server` trusting `ca_pem`, with a bearer token.
pub fn kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine as _;
    use std::fmt::Write;
    let b64 = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let mut s = String::new();
    let _ = write!(
        s,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {b64}\nusers:\n- name: test\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test, namespace: default}}\ncurrent-context: test\n"
    );
    s
}
