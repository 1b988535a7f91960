//! The kubelet's checkpoint API over HTTPS: the address and TLS set-up, the request path, the
//! answer, and where the agent finds the archive the kubelet reported.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::runtime::control::ToolControl;
use crate::runtime::error::{Result, RuntimeError, io_err};

/// Where the kubelet writes checkpoint archives on the node.
pub const KUBELET_CHECKPOINTS_DIR: &str = "/var/lib/kubelet/checkpoints";
/// The kubelet's HTTPS port.
pub const KUBELET_PORT: u16 = 10250;
/// Longest kubelet answer read (the JSON is a few hundred bytes).
const MAX_BODY: usize = 1 << 20;

/// The kubelet checkpoint API of one node.
#[derive(Clone, Debug)]
pub struct KubeletApi {
    /// `host:port` to connect to (`<node IP>:10250`).
    pub address: String,
    /// The name the kubelet's serving certificate is checked against.
    pub server_name: String,
    /// TLS: roots that sign the kubelet's serving cert, and the agent's client cert if any.
    pub tls: Arc<rustls::ClientConfig>,
    /// Bearer token (the agent's ServiceAccount token), when not using a client cert.
    pub bearer_token: Option<String>,
    /// The checkpoints dir as the kubelet names it ([`KUBELET_CHECKPOINTS_DIR`]).
    pub host_checkpoints_dir: PathBuf,
    /// The same dir as the agent sees it (its hostPath mount).
    pub local_checkpoints_dir: PathBuf,
    /// The task's deadline and cancel switch (default: none): a cancelled task stops waiting
    /// for the kubelet, and the kubelet is asked to give up by the task's deadline (`timeout`).
    pub control: ToolControl,
}

impl KubeletApi {
    /// The kubelet at `address`, its cert checked for `server_name`, archives read where the
    /// kubelet writes them.
    pub fn new(
        address: impl Into<String>,
        server_name: impl Into<String>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        KubeletApi {
            address: address.into(),
            server_name: server_name.into(),
            tls,
            bearer_token: None,
            host_checkpoints_dir: PathBuf::from(KUBELET_CHECKPOINTS_DIR),
            local_checkpoints_dir: PathBuf::from(KUBELET_CHECKPOINTS_DIR),
            control: ToolControl::default(),
        }
    }

    /// `(host:port to connect to, host for the certificate check)` of a kubelet URL
    /// `https://<host>[:<port>]` (`[v6]` hosts in brackets; default port [`KUBELET_PORT`]).
    pub fn address_of(url: &str) -> Result<(String, String)> {
        let bad =
            || RuntimeError::Invalid(format!("kubelet URL {url:?} is not https://host[:port]"));
        let authority = url
            .strip_prefix("https://")
            .ok_or_else(bad)?
            .trim_end_matches('/');
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad())?,
            None => KUBELET_PORT,
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad());
        }
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok((address, host.to_string()))
    }

    /// A rustls client config (ring) trusting `ca_pem` and, with `client`, authenticating with
    /// that certificate chain and key (PEM).
    pub fn tls_config(
        ca_pem: &[u8],
        client: Option<(&[u8], &[u8])>,
    ) -> Result<Arc<rustls::ClientConfig>> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            RuntimeError::Kubelet(format!("TLS setup: {what}: {e}"))
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| bad("CA PEM", &e))?;
            roots.add(cert).map_err(|e| bad("CA cert", &e))?;
        }
        if roots.is_empty() {
            return Err(RuntimeError::Kubelet("TLS setup: no CA certificate".into()));
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_root_certificates(roots);
        let config = match client {
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| bad("client cert PEM", &e))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|e| bad("client key PEM", &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad("client cert", &e))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// The request path for one container; names are checked to be DNS-1123 names, so the
    /// path needs no escaping and cannot address anything else.
    pub fn checkpoint_path(
        namespace: &str,
        pod: &str,
        container: &str,
        timeout: Duration,
    ) -> Result<String> {
        for (what, name) in [
            ("namespace", namespace),
            ("pod", pod),
            ("container", container),
        ] {
            let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            // DNS-1123: lower-case alphanumerics, '-' and '.', alphanumeric at both ends (so
            // never `.` or `..`).
            let ok = name.len() <= 253
                && name.bytes().next().is_some_and(alnum)
                && name.bytes().last().is_some_and(alnum)
                && name.bytes().all(|b| alnum(b) || b == b'-' || b == b'.');
            if !ok {
                return Err(RuntimeError::Invalid(format!(
                    "{what} {name:?} is not a Kubernetes name"
                )));
            }
        }
        Ok(format!(
            "/checkpoint/{namespace}/{pod}/{container}?timeout={}",
            timeout.as_secs().max(1)
        ))
    }

    /// The archive paths from the kubelet's answer.
    pub fn parse_response(status: StatusCode, body: &[u8]) -> Result<Vec<String>> {
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
            return Err(RuntimeError::Kubelet(format!(
                "kubelet answered {status}: {}",
                text.trim()
            )));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            items: Vec<String>,
        }
        let answer: Answer = serde_json::from_slice(body)
            .map_err(|e| RuntimeError::Kubelet(format!("unexpected answer ({e})")))?;
        if answer.items.is_empty() {
            return Err(RuntimeError::Kubelet("answer lists no archive".into()));
        }
        Ok(answer.items)
    }

    /// Where the agent finds the archive the kubelet reported: the host path mapped into
    /// `local_checkpoints_dir`; only a plain file directly in the checkpoints dir is accepted.
    pub fn local_archive(&self, reported: &str) -> Result<PathBuf> {
        let rel = Path::new(reported)
            .strip_prefix(&self.host_checkpoints_dir)
            .map_err(|_| {
                RuntimeError::Kubelet(format!(
                    "archive {reported:?} is not under {}",
                    self.host_checkpoints_dir.display()
                ))
            })?;
        let name = rel.to_str().unwrap_or_default();
        if name.contains('/') {
            return Err(RuntimeError::Kubelet(format!(
                "archive {reported:?} is not directly in the checkpoints dir"
            )));
        }
        crate::store::validate_relative(name)?;
        Ok(self.local_checkpoints_dir.join(name))
    }

    /// POSTs `path` and returns the status and body; gives up at `limit` (cut to the task's
    /// deadline) or when the task is cancelled.
    pub fn post(&self, path: &str, limit: Duration) -> Result<(StatusCode, Bytes)> {
        let what = || format!("kubelet POST {path}");
        if self.control.is_cancelled() {
            return Err(RuntimeError::Cancelled { what: what() });
        }
        let limit = self.control.limit(limit);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("start the kubelet client runtime"))?;
        rt.block_on(async {
            let cancelled = async {
                while !self.control.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::select! {
                r = tokio::time::timeout(limit, self.post_async(path)) => {
                    r.map_err(|_| RuntimeError::Timeout { what: what(), after: limit })?
                }
                _ = cancelled => Err(RuntimeError::Cancelled { what: what() }),
            }
        })
    }

    async fn post_async(&self, path: &str) -> Result<(StatusCode, Bytes)> {
        let k = |what: &str, e: &dyn std::fmt::Display| {
            RuntimeError::Kubelet(format!("{what} {}: {e}", self.address))
        };
        let name =
            ServerName::try_from(self.server_name.clone()).map_err(|e| k("server name for", &e))?;
        let tcp = tokio::net::TcpStream::connect(&self.address)
            .await
            .map_err(|e| k("connect to", &e))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| k("TLS handshake with", &e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| k("HTTP handshake with", &e))?;
        let conn = tokio::spawn(conn);
        let mut req = hyper::Request::post(path)
            .header(hyper::header::HOST, self.address.as_str())
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(token) = &self.bearer_token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| k("build request for", &e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| k("POST to", &e))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| k("read answer of", &e))?
            .to_bytes();
        conn.abort();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kubelet_urls_give_the_address_and_the_certificate_name() {
        let a = |u: &str| KubeletApi::address_of(u).unwrap();
        assert_eq!(
            a("https://10.0.0.7:10250"),
            ("10.0.0.7:10250".into(), "10.0.0.7".into())
        );
        assert_eq!(
            a("https://node-1/"),
            ("node-1:10250".into(), "node-1".into())
        );
        assert_eq!(
            a("https://[fd00::7]:1234"),
            ("[fd00::7]:1234".into(), "fd00::7".into())
        );
        assert_eq!(
            a("https://[fd00::7]"),
            ("[fd00::7]:10250".into(), "fd00::7".into())
        );
        for bad in [
            "http://n:10250",
            "https://",
            "https://n:x",
            "https://[fd00::7",
            "https://n/p",
        ] {
            assert!(KubeletApi::address_of(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_request_path_takes_only_kubernetes_names() {
        assert_eq!(
            KubeletApi::checkpoint_path("default", "web-0", "app", Duration::from_secs(120))
                .unwrap(),
            "/checkpoint/default/web-0/app?timeout=120"
        );
        for (ns, pod, c) in [
            ("a/b", "p", "c"),
            ("ns", "..", "c"),
            ("ns", "p", ""),
            ("ns", "P", "c"),
            ("ns", "p", "c?x=1"),
            ("-ns", "p", "c"),
        ] {
            let r = KubeletApi::checkpoint_path(ns, pod, c, Duration::from_secs(1));
            assert!(r.is_err(), "{ns}/{pod}/{c} accepted");
        }
    }

    #[test]
    fn the_answer_is_parsed_or_its_error_surfaces() {
        let items = KubeletApi::parse_response(
            StatusCode::OK,
            br#"{"items":["/var/lib/kubelet/checkpoints/checkpoint-p_ns-c-2026-11-26T04:00:00Z.tar"]}"#,
        )
        .unwrap();
        assert_eq!(items.len(), 1);
        let e = KubeletApi::parse_response(
            StatusCode::FORBIDDEN,
            b"Forbidden (user=x, verb=create, resource=nodes, subresource=checkpoint)\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("403") && e.contains("subresource=checkpoint"),
            "{e}"
        );
        assert!(KubeletApi::parse_response(StatusCode::OK, b"{}").is_err());
        assert!(KubeletApi::parse_response(StatusCode::OK, br#"{"items":[]}"#).is_err());
    }

    #[test]
    fn reported_archives_map_into_the_local_mount_and_nowhere_else() {
        let tls = KubeletApi::tls_config(
            rcgen::generate_simple_self_signed(vec!["localhost".into()])
                .unwrap()
                .cert
                .pem()
                .as_bytes(),
            None,
        )
        .unwrap();
        let mut k = KubeletApi::new("127.0.0.1:10250", "localhost", tls);
        k.local_checkpoints_dir = PathBuf::from("/host/ckpt");
        assert_eq!(
            k.local_archive("/var/lib/kubelet/checkpoints/checkpoint-a.tar")
                .unwrap(),
            PathBuf::from("/host/ckpt/checkpoint-a.tar")
        );
        for bad in [
            "/etc/shadow",
            "/var/lib/kubelet/checkpoints/../../x",
            "/var/lib/kubelet/checkpoints/sub/x.tar",
            "/var/lib/kubelet/checkpoints",
        ] {
            assert!(k.local_archive(bad).is_err(), "{bad} accepted");
        }
    }
}
