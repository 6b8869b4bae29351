//! TLS for the fallback. CloudPal serves a self-signed certificate made once and kept in its
//! state directory; members trust exactly that certificate, by the SHA-256 of its DER bytes
//! that its address carries (`/tls/certhash/…`, as libp2p's WebTransport and WebRTC pin
//! theirs) — in the invite code, the Hello and the presence records, all of which members
//! sign or authenticate. No web PKI is involved, and nothing else is trusted: the TLS is the
//! disguise and an outer lock, the Noise sessions inside are what authenticate the ends.

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// CloudPal's certificate and key, and the certificate's SHA-256.
#[derive(Clone)]
pub struct Identity {
    pub certificate: CertificateDer<'static>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    pub certhash: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("certhash", &self.certhash).finish_non_exhaustive()
    }
}

pub fn certhash(certificate: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, certificate);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate in `dir` (`tls.crt`, `tls.key`), made on first use. It is kept: members
/// pin it, so a new one would strand those that know only the old.
pub fn load_or_create(dir: &Path) -> Result<Identity> {
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    if !cert_path.exists() || !key_path.exists() {
        let key = rcgen::KeyPair::generate().context("cannot make a TLS key")?;
        let mut params = rcgen::CertificateParams::new(vec!["cloudpal.invalid".to_owned()]).context("cannot make a TLS certificate")?;
        // No name in it: a certificate that says what made it is a fingerprint.
        params.distinguished_name = rcgen::DistinguishedName::new();
        let certificate = params.self_signed(&key).context("cannot sign the TLS certificate")?;
        crate::statedir::write_private(&key_path, &key.serialize_der())?;
        crate::statedir::write_private(&cert_path, certificate.der())?;
    }
    let certificate = std::fs::read(&cert_path).with_context(|| format!("cannot read {}", cert_path.display()))?;
    let key = std::fs::read(&key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
    Ok(Identity { certhash: certhash(&certificate), certificate: CertificateDer::from(certificate), key: Arc::new(PrivatePkcs8KeyDer::from(key)) })
}

/// What CloudPal's listener speaks: TLS 1.3 or 1.2, HTTP/1.1 by ALPN, no client certificates.
pub fn server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>> {
    let key = PrivateKeyDer::Pkcs8(identity.key.as_ref().clone_key());
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![identity.certificate.clone()], key)
        .context("the TLS key in the state directory does not fit its certificate; delete tls.crt and tls.key there")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a member dials with: only the certificate whose SHA-256 is `certhash`.
pub fn client_config(certhash: [u8; 32]) -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let verifier = Arc::new(Pinned { certhash, algorithms: provider.signature_verification_algorithms });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // As a browser offers them.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Trusts one certificate, by hash; the handshake's signatures are checked as usual.
#[derive(Debug)]
struct Pinned {
    certhash: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(&self, end_entity: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        if certhash(end_entity) == self.certhash {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
