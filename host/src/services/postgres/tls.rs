//! TLS to the fleet's database, as libpq reads the URL: `sslmode` (`disable`, `prefer`, the
//! default, `require`, `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file of the CA
//! certificates to trust, or `system` for the system's store). tokio-postgres knows only
//! the first three modes and no `sslrootcert`: [`split`] takes both out of the URL and
//! [`TlsPolicy::connector`] builds the rustls configuration that does what libpq does:
//!
//! - `prefer` and `require` without `sslrootcert`: encrypted, the server's certificate not
//!   checked (`prefer` also connects in the clear to a server without TLS);
//! - `require` with `sslrootcert`, and `verify-ca`: the certificate must chain to a trusted
//!   CA;
//! - `verify-full`: that, and it must name the host of the URL.
//!
//! Trusted CAs: `sslrootcert`'s file, else (`verify-*` without it, or `sslrootcert=system`)
//! the system's store.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::PgError;

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Nothing: encrypted only (`prefer`, `require`).
    None,
    /// The chain to a trusted CA (`verify-ca`, `require` with `sslrootcert`).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// Where the trusted CAs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    System,
    File(String),
}

/// What the URL asked of TLS, beyond what tokio-postgres reads itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// `sslmode` as given (`prefer` when it is not).
    mode: String,
    check: Check,
    roots: Option<Roots>,
}

/// Takes `sslmode=verify-ca|verify-full` and `sslrootcert` out of `url` (tokio-postgres
/// refuses both); the URL to hand it (`verify-*` read as `require`, which makes it insist
/// on TLS) and the policy for [`TlsPolicy::connector`].
pub fn split(url: &str) -> Result<(String, TlsPolicy), PgError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut mode = None;
    let mut roots = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
                mode = Some(value.to_owned());
                let passed = match value {
                    "verify-ca" | "verify-full" => "require",
                    other => other,
                };
                kept.push(format!("sslmode={passed}"));
            }
            "sslrootcert" => {
                let path = percent_decode(value).ok_or_else(|| {
                    PgError::Url(format!("sslrootcert {value:?}: not a valid %-encoded path"))
                })?;
                roots = Some(match path.as_str() {
                    "system" => Roots::System,
                    "" => return Err(PgError::Url("sslrootcert: empty".into())),
                    _ => Roots::File(path),
                });
            }
            _ => kept.push(pair.to_owned()),
        }
    }
    let check = match (mode.as_deref(), &roots) {
        (Some("verify-full"), _) => Check::Full,
        (Some("verify-ca"), _) | (Some("require"), Some(_)) => Check::Chain,
        _ => Check::None,
    };
    let roots = match check {
        Check::None => None,
        Check::Chain | Check::Full => Some(roots.unwrap_or(Roots::System)),
    };
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mode = mode.unwrap_or_else(|| "prefer".to_owned());
    Ok((url, TlsPolicy { mode, check, roots }))
}

impl TlsPolicy {
    /// The connector that checks what the policy says; a CA file that cannot be read, or
    /// holds no certificate, is refused in one line naming it.
    pub fn connector(&self) -> Result<MakeRustlsConnect, PgError> {
        // rustls 0.23.48 deprecates the ring provider for its lack of post-quantum key
        // exchange; the other one, aws-lc-rs, needs cmake and a C toolchain at build time,
        // and `cargo build` must need nothing installed by hand.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = match &self.roots {
            None => None,
            Some(roots) => {
                let store = root_store(roots)?;
                let verifier =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                        .build()
                        .map_err(|err| PgError::Url(format!("TLS: {err}")))?;
                Some(verifier)
            }
        };
        let verifier = Verifier {
            chain,
            check: self.check,
            provider: provider.clone(),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| PgError::Url(format!("TLS: {err}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    /// One line for the log: what this connection's TLS checks.
    pub fn describe(&self) -> &'static str {
        match (self.mode.as_str(), self.check) {
            ("disable", _) => "off (sslmode=disable)",
            (_, Check::Full) => {
                "required, the certificate checked against the trusted CAs and the host name"
            }
            (_, Check::Chain) => "required, the certificate checked against the trusted CAs",
            ("require", Check::None) => {
                "required, the certificate not checked (sslmode=verify-full checks it)"
            }
            (_, Check::None) => {
                "where the server offers it, the certificate not checked (sslmode=verify-full \
                 checks it)"
            }
        }
    }
}

fn root_store(roots: &Roots) -> Result<RootCertStore, PgError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect())
                .map_err(|err| PgError::Url(format!("sslrootcert {path}: {err}")))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(PgError::Url(format!(
                    "sslrootcert {path}: holds no CA certificate (PEM)"
                )));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(PgError::Url(format!(
                    "TLS: no CA certificate found in the system's store ({}); give \
                     sslrootcert=FILE in the URL",
                    found
                        .errors
                        .first()
                        .map_or_else(|| "it is empty".to_owned(), ToString::to_string)
                )));
            }
        }
    }
    Ok(store)
}

/// libpq's checks on rustls: the WebPKI verifier for the chain (and the name), or none.
/// The handshake's signatures are always verified: they prove the server holds the
/// certificate's key, whatever is checked of the certificate itself.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check: Check,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.check == Check::Chain => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `%XX` escapes of a URL's query value decoded; `None` for a bad escape or bytes that are
/// not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_modes_are_read_and_taken_out_of_the_url() {
        let (url, policy) = split("postgres://u@h/db").unwrap();
        assert_eq!(
            (url.as_str(), policy.check),
            ("postgres://u@h/db", Check::None)
        );

        let (url, policy) =
            split("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(url, "postgres://u@h/db?sslmode=require");
        assert_eq!(policy.check, Check::Full);
        assert_eq!(policy.roots, Some(Roots::File("/etc/ca.pem".into())));

        let (url, policy) =
            split("postgres://u@h/db?application_name=x&sslmode=verify-ca").unwrap();
        assert_eq!(url, "postgres://u@h/db?application_name=x&sslmode=require");
        assert_eq!(
            (policy.check, policy.roots),
            (Check::Chain, Some(Roots::System))
        );

        // libpq: `require` with a root certificate checks the chain.
        let (_, policy) = split("postgres://u@h/db?sslmode=require&sslrootcert=/ca").unwrap();
        assert_eq!(policy.check, Check::Chain);
        let (_, policy) = split("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!((policy.check, policy.roots), (Check::None, None));
    }

    #[test]
    fn a_bad_root_file_is_one_line_naming_it() {
        let (_, policy) =
            split("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").unwrap();
        let err = policy
            .connector()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("sslrootcert /nonexistent/ca.pem"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(split("postgres://u@h/db?sslrootcert=%zz").is_err());
    }
}
