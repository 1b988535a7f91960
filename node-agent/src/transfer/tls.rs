//! Transfer TLS, mutual: every agent has its own self-signed certificate, which it serves with
//! and presents as a client. A pulling agent accepts exactly the source certificate whose
//! SHA-256 the operator put in its task; the source demands a client certificate in the
//! handshake and serves a grant only to the one whose SHA-256 the operator put in the grant
//! (the target agent's, from its Lease).
//!
//! Why pinning per-node certificates rather than a cluster CA in a Secret:
//! - no CA private key on every node, so no node can mint a certificate that another node's
//!   pin accepts;
//! - no cert-manager (or other issuer) dependency, and nothing to distribute but a fingerprint
//!   that travels through objects the operator already writes (the agent's Lease annotation
//!   `ferry.dev/transfer-cert-sha256`, copied into the Restore NodeTask's
//!   `spec.source.certSha256` and the grant's `ferry.dev/client-cert-sha256`);
//! - rotation is a restart: delete `<state>/tls/` and the agent publishes a new fingerprint.
//!
//! What a compromised node can and cannot do (docs/security.md): it holds only its own key,
//! so it cannot complete a handshake as another agent. A fingerprint is only as good as the
//! Lease it comes from: the agents' RBAC lets every agent patch every agent Lease, and what
//! stops a node from putting its own fingerprint on another node's Lease (and so being
//! pinned as that node, as a source or as a target) is the ValidatingAdmissionPolicy
//! `ferry-agent-node-scope` (`manifests/policy/`), which lets an agent's node-bound token
//! write only its own Lease. Without that policy installed, a compromised node can
//! impersonate any other. It can still read every grant Secret of the agents' namespace
//! (`get` by name), but a token is served only to the certificate pinned in its grant.
//!
//! Agents are reached by pod/node IP, so there is no hostname to check; the pin replaces the
//! chain and name checks, while the handshake signatures are still verified, so a peer must
//! hold the pinned certificate's private key. Validity dates are not checked either: the pin
//! is the trust, and it is revoked by changing the fingerprint.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{Result, TransferError, io_err};
use crate::store::hex;

/// Subdirectory of the agent's state directory holding its certificate and key.
pub const TLS_DIR: &str = "tls";
/// The certificate (PEM).
pub const CERT_FILE: &str = "cert.pem";
/// The private key (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "key.pem";
/// Subject name of every agent's certificate (informational: names are not checked).
const SUBJECT_NAME: &str = "ferry-agent";

/// Hex SHA-256 of a certificate's DER: what gets pinned.
pub fn fingerprint_hex(cert_der: &[u8]) -> String {
    hex(&Sha256::digest(cert_der))
}

/// The ring provider: both ends use it explicitly, never the process default (which could
/// be aws-lc if another crate installs it).
fn provider() -> Arc<CryptoProvider> {
    // AES-128-GCM first: the image is already integrity-checked end to end by SHA-256, and
    // AES-128 costs less CPU per byte than AES-256 (transfers are CPU-bound on small nodes).
    let mut provider = ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn tls_err(context: &str) -> impl FnOnce(rustls::Error) -> TransferError + '_ {
    move |e| TransferError::Invalid(format!("{context}: {e}"))
}

/// An agent's serving certificate and key.
pub struct NodeIdentity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    fingerprint: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// A fresh ECDSA P-256 self-signed certificate, kept in memory only.
    pub fn generate() -> Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec![SUBJECT_NAME.to_string()])
            .map_err(|e| TransferError::Invalid(format!("generate certificate: {e}")))?;
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        Ok(Self::from_parts(cert, key))
    }

    /// Loads `<state_dir>/tls/{cert,key}.pem`, creating them on first start (key mode 0600),
    /// so the fingerprint survives restarts.
    pub fn load_or_create(state_dir: &Path) -> Result<Self> {
        let dir = state_dir.join(TLS_DIR);
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if cert_path.exists() || key_path.exists() {
            let cert = CertificateDer::from_pem_file(&cert_path).map_err(|e| {
                TransferError::Invalid(format!("read {}: {e}", cert_path.display()))
            })?;
            let key = PrivateKeyDer::from_pem_file(&key_path)
                .map_err(|e| TransferError::Invalid(format!("read {}: {e}", key_path.display())))?;
            let identity = Self::from_parts(cert, key);
            // A key that does not match the certificate would only show up as failed
            // handshakes on the peers; fail at start instead.
            identity.server_config()?;
            return Ok(identity);
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(format!("create {}", dir.display())))?;
        let certified = rcgen::generate_simple_self_signed(vec![SUBJECT_NAME.to_string()])
            .map_err(|e| TransferError::Invalid(format!("generate certificate: {e}")))?;
        // The key first, then the certificate: a crash in between leaves a key without a
        // certificate, which the next start reports instead of silently using.
        write_new(
            &key_path,
            certified.signing_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_new(&cert_path, certified.cert.pem().as_bytes(), 0o644)?;
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        Ok(Self::from_parts(cert, key))
    }

    fn from_parts(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Self {
        let fingerprint = fingerprint_hex(&cert);
        NodeIdentity {
            cert,
            key,
            fingerprint,
        }
    }

    /// Hex SHA-256 of the certificate's DER (for the Lease annotation).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The certificate's DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The server's TLS configuration: TLS 1.3 only (both ends are ferry), ring, and a client
    /// certificate required (any one whose handshake signature verifies: which one may read
    /// what is decided per request, by the grant's pin, see [`peer_fingerprint`]).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let provider = provider();
        let verifier = AnyClientCert {
            algorithms: provider.signature_verification_algorithms,
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err("server TLS versions"))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(tls_err("server certificate"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(format!("create {}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err(format!("write {}", path.display())))
}

/// A client configuration that accepts only the certificate with SHA-256 `pinned_sha256`
/// (hex, as published by the source agent) and presents `identity`'s certificate (the source
/// serves a grant only to the certificate pinned in it).
pub fn pinned_client_config(
    pinned_sha256: &str,
    identity: &NodeIdentity,
) -> Result<Arc<ClientConfig>> {
    let pin = parse_fingerprint(pinned_sha256)?;
    let provider = provider();
    let verifier = PinnedCert {
        pin,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("client TLS versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(tls_err("client certificate"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Hex SHA-256 of the certificate a TLS peer presented (`None`: it presented none).
pub fn peer_fingerprint(connection: &rustls::CommonState) -> Option<String> {
    connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| fingerprint_hex(cert.as_ref()))
}

/// The source's client verifier: a certificate is required and its handshake signature must
/// verify (the client holds its key), but any certificate passes the handshake: the source
/// cannot know which grant a connection is for before its first request, so the grant's pin
/// is checked per request against [`peer_fingerprint`].
#[derive(Debug)]
struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn parse_fingerprint(hex_str: &str) -> Result<[u8; 32]> {
    let bad = || {
        TransferError::Invalid(format!(
            "certificate fingerprint {hex_str:?} is not 64 hex digits"
        ))
    };
    let hex_str = hex_str.trim();
    if hex_str.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = hex_str.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Accepts exactly one end-entity certificate, by fingerprint; handshake signatures are still
/// checked against it with the ring provider's algorithms.
#[derive(Debug)]
struct PinnedCert {
    pin: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let actual = Sha256::digest(end_entity.as_ref());
        if bool::from(actual.as_slice().ct_eq(&self.pin)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate sha256 {} is not the pinned {}",
                hex(&actual),
                hex(&self.pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn identity_persists_with_a_private_key() {
        let tmp = tempfile::tempdir().unwrap();
        let first = NodeIdentity::load_or_create(tmp.path()).unwrap();
        assert_eq!(first.fingerprint().len(), 64);
        let mode = fs::metadata(tmp.path().join("tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = NodeIdentity::load_or_create(tmp.path()).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert_ne!(
            NodeIdentity::generate().unwrap().fingerprint(),
            first.fingerprint()
        );
        assert!(!format!("{first:?}").contains("PRIVATE"));

        // A key without its certificate is an error, not a silent new identity.
        fs::remove_file(tmp.path().join("tls/cert.pem")).unwrap();
        assert!(NodeIdentity::load_or_create(tmp.path()).is_err());
    }

    #[test]
    fn fingerprints_parse_strictly() {
        let identity = NodeIdentity::generate().unwrap();
        let fp = identity.fingerprint().to_string();
        pinned_client_config(&fp, &identity).unwrap();
        pinned_client_config(&fp.to_uppercase(), &identity).unwrap();
        for bad in ["", "abc", &fp[..63], &format!("{}zz", &fp[..62])] {
            assert!(pinned_client_config(bad, &identity).is_err(), "{bad}");
        }
    }
}
