//! Who may pull what (issue #14, findings 1 and 2; docs/security.md): real sockets, real mutual
//! TLS, real stores. The source serves a grant only to the certificate pinned in it, only the
//! image of the request (and request UID) it was minted for; the target pulls only an image
//! whose digest the task pins. Each refusal is paired with the legitimate pull succeeding.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod transfer_common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_agent::transfer::{Grant, NodeIdentity, PullSpec, TransferError, pull};
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use transfer_common::*;

/// Accepts any server certificate (the test client only checks who the server is not).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client that presents no certificate at all.
fn anonymous_client() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused_in_the_handshake_even_with_the_token() {
    let (_tmp, source_store, target_store) = stores(64 * MIB);
    publish(&source_store, SOURCE_LOCATION, &[("f", MIB)]);
    let source = Source::start(source_store.clone()).await;
    let tcp = TcpStream::connect(source.server.local_addr())
        .await
        .unwrap();
    let config = anonymous_client();
    // TLS 1.3: the client finishes its side first; the server's refusal arrives as an alert
    // on the first read, so the request is what fails.
    let refused = async {
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let request = Request::get(format!("/v1/images/{NS}/{REQUEST}/manifest"))
            .header("host", "source")
            .header(
                "authorization",
                format!("Bearer {}", source.token.expose_secret()),
            )
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)
    }
    .await;
    assert!(refused.is_err(), "served without a client certificate");
    let stats = source.server.stats();
    assert_eq!(
        stats.requests.load(Ordering::Relaxed),
        0,
        "a request got through"
    );
    assert!(stats.handshake_failures.load(Ordering::Relaxed) >= 1);
    assert_eq!(stats.bytes_served.load(Ordering::Relaxed), 0);
    // The target agent, with its certificate, pulls.
    let report = pull_ok(&source, &source.spec(), &target_store).await;
    assert_eq!(report.digest, source.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_agents_certificate_with_the_right_token_gets_nothing() {
    let (_tmp, source_store, target_store) = stores(64 * MIB);
    publish(&source_store, SOURCE_LOCATION, &[("f", MIB)]);
    let source = Source::start(source_store.clone()).await;
    // A third node's agent that read the grant Secret (every agent may `get` it): its own
    // certificate, the right token.
    let intruder = NodeIdentity::generate().unwrap();
    let err = pull(&source.spec(), &intruder, &target_store, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Forbidden(_)), "{err}");
    assert!(
        err.to_string().contains("another agent's certificate"),
        "{err}"
    );
    let base = format!("/v1/images/{NS}/{REQUEST}");
    let token = source.token.expose_secret().to_string();
    for path in [format!("{base}/manifest"), format!("{base}/files/f")] {
        let (status, code, body) = raw_get_as(&source, &intruder, &path, Some(&token), None).await;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{path}");
        assert!(body.len() < 200, "{path} served data");
    }
    assert_eq!(
        source.server.stats().bytes_served.load(Ordering::Relaxed),
        0
    );
    assert!(!target_store.exists(TARGET_LOCATION).unwrap());
    // The grant's own agent pulls.
    pull_ok(&source, &source.spec(), &target_store).await;
    assert_intact(&source_store);
}

/// Installs `grant` as the request's and pulls: refused with 403, nothing published.
async fn forbidden(
    source: &Source,
    target_store: &ferry_agent::store::Store,
    grant: Grant,
) -> String {
    source.grants.insert(NS, REQUEST, grant);
    let err = source.pull(&source.spec(), target_store).await.unwrap_err();
    assert!(matches!(err, TransferError::Forbidden(_)), "{err}");
    assert!(!target_store.exists(TARGET_LOCATION).unwrap());
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_is_good_only_for_its_request_image_and_uid() {
    let (_tmp, source_store, target_store) = stores(64 * MIB);
    publish(&source_store, SOURCE_LOCATION, &[("f", MIB)]);
    // Another namespace's image on the same source.
    publish(&source_store, "team-b/migrate-1", &[("g", MIB)]);
    let source = Source::start(source_store.clone()).await;
    let legit = grant_for(&source.token, &source.target);
    // A grant found under this request's name that points at another namespace's image.
    let err = forbidden(
        &source,
        &target_store,
        Grant {
            location: "team-b/migrate-1".into(),
            ..legit.clone()
        },
    )
    .await;
    assert!(err.contains("not for this image"), "{err}");
    // ...or says it was minted for another request.
    let err = forbidden(
        &source,
        &target_store,
        Grant {
            namespace: "team-b".into(),
            location: "team-b/migrate-1".into(),
            ..legit.clone()
        },
    )
    .await;
    assert!(err.contains("not for this image"), "{err}");
    // A grant whose request UID is not the one the image was made for (a stale grant, or an
    // image left by an earlier request of the same name).
    let err = forbidden(
        &source,
        &target_store,
        Grant {
            request_uid: "another-uid".into(),
            ..legit.clone()
        },
    )
    .await;
    assert!(err.contains("another request of this name"), "{err}");
    // A grant with no client pin serves no one over TLS (fail closed).
    let err = forbidden(
        &source,
        &target_store,
        Grant {
            client_cert_sha256: None,
            ..legit.clone()
        },
    )
    .await;
    assert!(err.contains("another agent's certificate"), "{err}");
    assert_eq!(
        source.server.stats().bytes_served.load(Ordering::Relaxed),
        0
    );
    // The grant as minted.
    source.grants.insert(NS, REQUEST, legit);
    pull_ok(&source, &source.spec(), &target_store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_malformed_digest_fails_the_pull_closed() {
    let (_tmp, source_store, target_store) = stores(64 * MIB);
    publish(&source_store, SOURCE_LOCATION, &[("f", MIB)]);
    let source = Source::start(source_store.clone()).await;
    for bad in ["", "not-hex", &"ab".repeat(31), &"zz".repeat(32)] {
        let spec = PullSpec {
            expected_digest: bad.to_string(),
            ..source.spec()
        };
        let err = source.pull(&spec, &target_store).await.unwrap_err();
        assert!(matches!(err, TransferError::Invalid(_)), "{bad:?}: {err}");
        assert!(err.to_string().contains("refusing to pull"), "{err}");
    }
    // Refused before a byte went out: not even a connection.
    assert_eq!(source.server.stats().connections.load(Ordering::Relaxed), 0);
    // A well-formed digest that is not the image's: refused after the manifest, nothing kept.
    let spec = PullSpec {
        expected_digest: "ab".repeat(32),
        ..source.spec()
    };
    let err = source.pull(&spec, &target_store).await.unwrap_err();
    assert!(
        matches!(err, TransferError::ImageDigestMismatch { .. }),
        "{err}"
    );
    assert!(!target_store.exists(TARGET_LOCATION).unwrap());
    // The pinned digest, in either case.
    let spec = PullSpec {
        expected_digest: source.digest.to_uppercase(),
        ..source.spec()
    };
    let report = pull_ok(&source, &spec, &target_store).await;
    assert_eq!(report.digest, source.digest);
}
