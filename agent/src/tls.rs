//! TLS set-up shared by everything in the process that speaks TLS.
//!
//! The Kubernetes client (kube, through hyper-rustls) and the S3 client (OpenDAL, through
//! reqwest) both use rustls. rustls refuses to guess when more than one cryptography provider
//! is compiled in, and panics at client creation when none was installed. The workspace
//! builds exactly one provider (`aws-lc-rs`, the one reqwest needs) and [`install_provider`]
//! installs it before anything else runs, so there is one provider for the whole process
//! whichever crates are linked.
//!
//! A private certificate authority for S3 (`--cacert`, as restic's) is read here into
//! certificates that are trusted *in addition to* the system's roots. The API server's CA
//! comes from the kubeconfig or the in-cluster service account, as usual.

use std::path::Path;

use crate::error::{Error, Result};

/// Installs the process-wide rustls provider (`aws-lc-rs`). Safe to call more than once;
/// the first call wins.
pub fn install_provider() {
    // Err means a provider is already installed (an earlier call): nothing to do.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Reads a PEM bundle of CA certificates; every certificate in it is trusted for S3.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_ca_bundle(&pem)
        .map_err(|e| Error::InvalidInput(format!("CA bundle {}: {e}", path.display())))?;
    Ok(pem)
}

/// Parses a PEM bundle into reqwest certificates, refusing a bundle with none.
pub fn parse_ca_bundle(pem: &[u8]) -> std::result::Result<Vec<reqwest::Certificate>, String> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        assert!(parse_ca_bundle(b"").unwrap_err().contains("no PEM"));
        assert!(parse_ca_bundle(b"hello").is_err());
    }

    #[test]
    fn installing_twice_is_harmless() {
        install_provider();
        install_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
