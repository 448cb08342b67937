//! TLS configuration for the validation server and its client, with rustls on the aws-lc-rs
//! provider: server certificate and key from PEM files, optional client certificates (mTLS)
//! verified against a CA file, and client trust roots. TLS 1.2 and 1.3 only. Must not fall back
//! to plaintext or to "accept any certificate".

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Server-side TLS files (`spec.server.tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// PEM CA certificates that sign acceptable client certificates.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate signed by `client_ca`.
    pub require_client_cert: bool,
}

/// Client-side TLS settings for talking to a validation server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM CA certificates to trust; `None` uses the system bundle
    /// (`/etc/ssl/certs/ca-certificates.crt`).
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key for mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// A TLS file is missing or unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Debian's CA bundle, used by the client when no CA file is given.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("{e:?}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("{e:?}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE in file"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_err(path, format!("no usable private key: {e:?}")))
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs(path)?);
    if added == 0 {
        return Err(file_err(path, "no usable CA certificate"));
    }
    Ok(store)
}

/// rustls server configuration: certificate, key, optional client verification, ALPN
/// `http/1.1`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
            let verifier = if files.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?,
            )
        }
        None if files.require_client_cert => {
            return Err(TlsError::Config(
                "require_client_cert needs tls.client_ca".into(),
            ));
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| file_err(&files.key, format!("does not match the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// rustls client configuration for the remote validator.
pub fn client_config(files: &ClientTlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let ca = files
        .ca
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(&ca)?);
    let mut config = match &files.client_cert {
        Some((cert, k)) => builder
            .with_client_auth_cert(certs(cert)?, key(k)?)
            .map_err(|e| file_err(k, format!("does not match the certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
pub(crate) mod test_pki {
    //! A throwaway CA, a server certificate for `localhost`/127.0.0.1 and a client
    //! certificate, written as PEM files in a temporary directory.

    use std::path::PathBuf;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    pub struct Pki {
        pub dir: tempfile::TempDir,
        pub ca: PathBuf,
        pub server_cert: PathBuf,
        pub server_key: PathBuf,
        pub client_cert: PathBuf,
        pub client_key: PathBuf,
    }

    pub fn issue(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |sans: Vec<String>, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost");
        let (client_pem, client_key_pem) = leaf(vec!["agent.test".into()], "agent");
        let w = |file: &str, text: &str| {
            let p = dir.path().join(file);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            ca: w("ca.pem", &ca_cert.pem()),
            server_cert: w("server.pem", &server_pem),
            server_key: w("server.key", &server_key_pem),
            client_cert: w("client.pem", &client_pem),
            client_key: w("client.key", &client_key_pem),
            dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::server::client::{FailoverMode, RemoteConfig, RemoteValidator, RemoteVerdict};
    use crate::server::listener::{ConnectionLimits, serve};

    async fn start(tls: Arc<rustls::ServerConfig>) -> (u16, tokio::sync::watch::Sender<bool>) {
        let router = axum::Router::new().route(
            "/v1/validate",
            axum::routing::post(|| async { axum::Json(json!({"decision": "allow"})) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(serve(
            listener,
            Some(tls),
            router,
            ConnectionLimits::default(),
            rx,
        ));
        (port, tx)
    }

    fn client(
        port: u16,
        pki: &test_pki::Pki,
        with_cert: bool,
        ca: Option<PathBuf>,
    ) -> RemoteValidator {
        RemoteValidator::new(
            RemoteConfig {
                url: format!("https://localhost:{port}/v1/validate"),
                tls: ClientTlsFiles {
                    ca: ca.or_else(|| Some(pki.ca.clone())),
                    client_cert: with_cert
                        .then(|| (pki.client_cert.clone(), pki.client_key.clone())),
                },
                timeout: Duration::from_secs(5),
                failover: FailoverMode::FailClosed,
            },
            false,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn test_tls_and_mtls() {
        let pki = test_pki::issue("t");
        let files = TlsFiles {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: None,
            require_client_cert: false,
        };
        let (port, _stop) = start(server_config(&files).unwrap()).await;
        let allow = RemoteVerdict::Allow { token_status: None };
        assert_eq!(
            client(port, &pki, false, None)
                .validate("t", &json!({}), None)
                .await,
            allow
        );

        // A client that does not trust our CA refuses the server.
        let other = test_pki::issue("other");
        let v = client(port, &pki, false, Some(other.ca.clone()))
            .validate("t", &json!({}), None)
            .await;
        assert!(matches!(v, RemoteVerdict::Unavailable { .. }), "{v:?}");

        // mTLS required: no certificate → refused; certificate from our CA → served; a
        // certificate from another CA → refused.
        let files = TlsFiles {
            client_ca: Some(pki.ca.clone()),
            require_client_cert: true,
            ..files
        };
        let (port, _stop2) = start(server_config(&files).unwrap()).await;
        assert!(matches!(
            client(port, &pki, false, None)
                .validate("t", &json!({}), None)
                .await,
            RemoteVerdict::Unavailable { .. }
        ));
        assert_eq!(
            client(port, &pki, true, None)
                .validate("t", &json!({}), None)
                .await,
            allow
        );
        let stranger = RemoteValidator::new(
            RemoteConfig {
                url: format!("https://localhost:{port}/v1/validate"),
                tls: ClientTlsFiles {
                    ca: Some(pki.ca.clone()),
                    client_cert: Some((other.client_cert.clone(), other.client_key.clone())),
                },
                timeout: Duration::from_secs(5),
                failover: FailoverMode::FailClosed,
            },
            false,
        )
        .unwrap();
        assert!(matches!(
            stranger.validate("t", &json!({}), None).await,
            RemoteVerdict::Unavailable { .. }
        ));
    }

    #[test]
    fn test_config_errors() {
        let pki = test_pki::issue("e");
        let files = TlsFiles {
            cert: pki.server_cert.clone(),
            key: pki.client_key.clone(),
            client_ca: None,
            require_client_cert: false,
        };
        assert!(server_config(&files).is_err(), "key of another certificate");
        let files = TlsFiles {
            key: pki.server_key.clone(),
            require_client_cert: true,
            ..files
        };
        assert!(matches!(server_config(&files), Err(TlsError::Config(_))));
        let files = TlsFiles {
            cert: pki.dir.path().join("missing.pem"),
            require_client_cert: false,
            ..files
        };
        assert!(matches!(server_config(&files), Err(TlsError::File { .. })));
    }
}
