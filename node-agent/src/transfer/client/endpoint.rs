//! The source's endpoint as the client connects to it: host (an IPv6 address without its
//! URL brackets), port, the `Host` header and the TLS server name.

use hyper::Uri;
use hyper::header::HeaderValue;
use rustls::pki_types::ServerName;

use super::spec::ClientTransport;
use crate::transfer::error::{Result, TransferError};

/// A parsed `scheme://host:port` endpoint.
#[derive(Debug)]
pub(super) struct Endpoint {
    /// Host to connect to.
    pub(super) host: String,
    /// Port to connect to.
    pub(super) port: u16,
    /// The `Host` header.
    pub(super) authority: HeaderValue,
    /// The TLS server name.
    pub(super) server_name: ServerName<'static>,
}

impl Endpoint {
    /// Parses `endpoint`, whose scheme must match `transport` (`https` for TLS).
    pub(super) fn parse(endpoint: &str, transport: &ClientTransport) -> Result<Self> {
        let invalid = |why: &str| TransferError::Invalid(format!("endpoint {endpoint:?}: {why}"));
        let uri: Uri = endpoint.parse().map_err(|e| invalid(&format!("{e}")))?;
        let (want_scheme, default_port) = match transport {
            ClientTransport::Tls(_) => ("https", 443),
            ClientTransport::Plain => ("http", 80),
        };
        if uri.scheme_str() != Some(want_scheme) {
            return Err(invalid(&format!("the scheme must be {want_scheme}")));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("must be scheme://host:port only"));
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let host = ferry_api::agent_lease::unbracket_host(authority.host()).to_string();
        let port = authority.port_u16().unwrap_or(default_port);
        // Agents are reached by IP: an IP server name sends no SNI, and the pinned verifier
        // ignores names anyway.
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| invalid(&format!("host: {e}")))?;
        let authority =
            HeaderValue::from_str(authority.as_str()).map_err(|e| invalid(&format!("{e}")))?;
        Ok(Endpoint {
            host,
            port,
            authority,
            server_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_to_host_port_and_header_with_ipv6_unbracketed() {
        let e = Endpoint::parse("http://10.0.0.7:9443", &ClientTransport::Plain).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("10.0.0.7", 9443));
        assert_eq!(e.authority, "10.0.0.7:9443");
        let e = Endpoint::parse("http://[fd00::7]:9443/", &ClientTransport::Plain).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("fd00::7", 9443));
        assert_eq!(e.authority, "[fd00::7]:9443");
        assert_eq!(
            Endpoint::parse("http://10.0.0.7", &ClientTransport::Plain)
                .unwrap()
                .port,
            80
        );
        for bad in [
            "https://10.0.0.7:9443",
            "http://10.0.0.7:9443/x",
            "http://10.0.0.7:9443/?q",
            "not a url",
        ] {
            assert!(
                matches!(
                    Endpoint::parse(bad, &ClientTransport::Plain),
                    Err(TransferError::Invalid(_))
                ),
                "{bad:?} accepted"
            );
        }
    }
}
