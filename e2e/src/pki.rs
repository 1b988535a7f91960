//! A throwaway PKI for one test cluster: a CA, the API server's serving certificate, one client
//! certificate per [`User`], the service-account signing key, and a kubeconfig per user.
//!
//! Keys are ECDSA P-256 (rcgen's default; the API server accepts EC keys for serving, client
//! authentication and ES256 service-account tokens). Everything lives in the cluster's temporary
//! directory and dies with it, so validity is rcgen's default (long) and nothing is protected.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::error::{Error, IoContext, Result};

/// The first address of the service CIDR the harness gives the API server (`10.96.0.0/16`); the
/// `kubernetes` Service gets it, so the serving certificate names it.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";
/// The common name of the API server's front-proxy client certificate (`--requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";
/// The common name of the API server's client certificate towards kubelets.
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";
const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// An identity that talks to the API server with a client certificate. Each has a kubeconfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum User {
    /// Cluster admin (`system:masters`): the harness itself, kubectl in tests, kwok.
    Admin,
    /// ferry's operator (user `ferry-operator`, group `ferry:operators`; no RBAC bound yet).
    Operator,
    /// A client certificate for user `ferry-agent`, group `ferry:agents`, with no RBAC bound. The
    /// harness's agents do not use it: they authenticate as the ServiceAccount
    /// `ferry-system/ferry-agent` with node-bound tokens ([`crate::identity`]).
    Agent,
    /// kube-controller-manager (`system:kube-controller-manager`, bound by the default RBAC policy).
    ControllerManager,
    /// kube-scheduler (`system:kube-scheduler`, bound by the default RBAC policy).
    Scheduler,
}

impl User {
    /// Every user, in the order their files are written.
    pub const ALL: [User; 5] = [
        User::Admin,
        User::Operator,
        User::Agent,
        User::ControllerManager,
        User::Scheduler,
    ];

    /// The Kubernetes user name (the certificate's common name).
    pub fn name(self) -> &'static str {
        match self {
            User::Admin => "ferry-e2e-admin",
            User::Operator => "ferry-operator",
            User::Agent => "ferry-agent",
            User::ControllerManager => "system:kube-controller-manager",
            User::Scheduler => "system:kube-scheduler",
        }
    }

    /// The Kubernetes groups (the certificate's organisations).
    pub fn groups(self) -> &'static [&'static str] {
        match self {
            User::Admin => &["system:masters"],
            User::Operator => &["ferry:operators"],
            User::Agent => &["ferry:agents"],
            User::ControllerManager | User::Scheduler => &[],
        }
    }

    /// The stem of this user's file names (`admin.crt`, `admin.key`, `admin.kubeconfig`).
    pub fn file_stem(self) -> &'static str {
        match self {
            User::Admin => "admin",
            User::Operator => "operator",
            User::Agent => "agent",
            User::ControllerManager => "controller-manager",
            User::Scheduler => "scheduler",
        }
    }
}

/// The files of a generated PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// Generates the CA, the serving certificate (SANs: 127.0.0.1, localhost, the `kubernetes`
    /// Service names and IP), the client certificates and the service-account key into `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).io_context("creating the PKI directory", dir)?;
        let pki = Self {
            dir: dir.to_path_buf(),
        };

        let ca_key = key_pair("the CA key")?;
        let ca = ca_params();
        let ca_cert = ca
            .self_signed(&ca_key)
            .map_err(|source| cert_error("the CA certificate", source))?;
        write(&pki.ca_cert(), &ca_cert.pem())?;
        write(&pki.ca_key(), &ca_key.serialize_pem())?;
        let issuer = Issuer::new(ca, ca_key);

        let mut serving = CertificateParams::default();
        serving.distinguished_name = dn("kube-apiserver", &[]);
        serving.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V4(KUBERNETES_SERVICE_IP)),
        ];
        for name in [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            let name = name
                .to_string()
                .try_into()
                .map_err(|source| cert_error("the serving certificate's DNS names", source))?;
            serving.subject_alt_names.push(SanType::DnsName(name));
        }
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving.use_authority_key_identifier_extension = true;
        let serving_key = key_pair("the API server's serving key")?;
        let serving_cert = serving
            .signed_by(&serving_key, &issuer)
            .map_err(|source| cert_error("the API server's serving certificate", source))?;
        write(&pki.serving_cert(), &serving_cert.pem())?;
        write(&pki.serving_key(), &serving_key.serialize_pem())?;

        for user in User::ALL {
            let mut client = CertificateParams::default();
            client.distinguished_name = dn(user.name(), user.groups());
            client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            client.use_authority_key_identifier_extension = true;
            let what = format!("the client certificate for {}", user.name());
            let key = key_pair(&what)?;
            let cert = client
                .signed_by(&key, &issuer)
                .map_err(|source| cert_error(&what, source))?;
            write(&pki.client_cert(user), &cert.pem())?;
            write(&pki.client_key(user), &key.serialize_pem())?;
        }

        // The API server's client certificate towards kubelets (`--kubelet-client-certificate`):
        // kubelets authenticate it against this CA and authorise it by webhook, and
        // system:masters may do everything, including `nodes/proxy` and `nodes/checkpoint`.
        let mut kubelet_client = CertificateParams::default();
        kubelet_client.distinguished_name = dn(KUBELET_CLIENT, &["system:masters"]);
        kubelet_client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        kubelet_client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        kubelet_client.use_authority_key_identifier_extension = true;
        let key = key_pair("the API server's kubelet client key")?;
        let cert = kubelet_client
            .signed_by(&key, &issuer)
            .map_err(|source| cert_error("the API server's kubelet client certificate", source))?;
        write(&pki.kubelet_client_cert(), &cert.pem())?;
        write(&pki.kubelet_client_key(), &key.serialize_pem())?;

        // The request-header (front-proxy) CA and the API server's proxy client certificate:
        // the API server publishes this CA in kube-system/extension-apiserver-authentication,
        // where controller-manager and scheduler look for it (they log an error every few
        // milliseconds while it is missing), and aggregated API servers trust it.
        let proxy_ca_key = key_pair("the front-proxy CA key")?;
        let mut proxy_ca = CertificateParams::default();
        proxy_ca.distinguished_name = dn("ferry-e2e-front-proxy-ca", &[]);
        proxy_ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        proxy_ca.key_usages = ca_usages();
        let proxy_ca_cert = proxy_ca
            .self_signed(&proxy_ca_key)
            .map_err(|source| cert_error("the front-proxy CA certificate", source))?;
        write(&pki.front_proxy_ca_cert(), &proxy_ca_cert.pem())?;
        let proxy_issuer = Issuer::new(proxy_ca, proxy_ca_key);
        let mut proxy_client = CertificateParams::default();
        proxy_client.distinguished_name = dn(FRONT_PROXY_CLIENT, &[]);
        proxy_client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        proxy_client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        proxy_client.use_authority_key_identifier_extension = true;
        let proxy_client_key = key_pair("the front-proxy client key")?;
        let proxy_client_cert = proxy_client
            .signed_by(&proxy_client_key, &proxy_issuer)
            .map_err(|source| cert_error("the front-proxy client certificate", source))?;
        write(&pki.front_proxy_client_cert(), &proxy_client_cert.pem())?;
        write(
            &pki.front_proxy_client_key(),
            &proxy_client_key.serialize_pem(),
        )?;

        // The API server verifies service-account tokens with this key and signs them with it;
        // kube-controller-manager signs the legacy token Secrets with it too.
        let sa_key = key_pair("the service-account signing key")?;
        write(&pki.service_account_key(), &sa_key.serialize_pem())?;
        // `--service-account-key-file` wants public keys: it does not take PKCS#8 private keys.
        write(&pki.service_account_public_key(), &sa_key.public_key_pem())?;
        Ok(pki)
    }

    /// The CA certificate (PEM): the API server's `--client-ca-file`, and what clients trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The API server's serving certificate (PEM).
    pub fn serving_cert(&self) -> PathBuf {
        self.dir.join("apiserver.crt")
    }

    /// The API server's serving key (PEM, PKCS#8).
    pub fn serving_key(&self) -> PathBuf {
        self.dir.join("apiserver.key")
    }

    /// The CA key (PEM, PKCS#8): kube-controller-manager signs approved CSRs with it.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// The API server's client certificate towards kubelets (PEM; CN [`KUBELET_CLIENT`], group
    /// `system:masters`).
    pub fn kubelet_client_cert(&self) -> PathBuf {
        self.dir.join("apiserver-kubelet-client.crt")
    }

    /// The key of [`Pki::kubelet_client_cert`] (PEM, PKCS#8).
    pub fn kubelet_client_key(&self) -> PathBuf {
        self.dir.join("apiserver-kubelet-client.key")
    }

    /// Issues a real node's certificates into `<dir>/nodes/<node>/`: a client certificate for
    /// `system:node:<node>` in group `system:nodes` (what the Node authorizer recognises), a
    /// kubeconfig using it that reaches `server`, and a serving certificate for the kubelet's
    /// HTTPS endpoint naming `ip` and the node name.
    pub fn issue_node(&self, node: &str, ip: IpAddr, server: &str) -> Result<NodeCerts> {
        let dir = self.dir.join("nodes").join(node);
        fs::create_dir_all(&dir).io_context("creating a node's PKI directory", &dir)?;
        let issuer = self.ca_issuer()?;
        let identity = format!("system:node:{node}");

        let mut client = CertificateParams::default();
        client.distinguished_name = dn(&identity, &["system:nodes"]);
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.use_authority_key_identifier_extension = true;
        let what = format!("the client certificate for {identity}");
        let key = key_pair(&what)?;
        let cert = client
            .signed_by(&key, &issuer)
            .map_err(|source| cert_error(&what, source))?;
        let certs = NodeCerts {
            client_cert: dir.join("kubelet-client.crt"),
            client_key: dir.join("kubelet-client.key"),
            serving_cert: dir.join("kubelet.crt"),
            serving_key: dir.join("kubelet.key"),
            kubeconfig: dir.join("kubelet.kubeconfig"),
        };
        write(&certs.client_cert, &cert.pem())?;
        write(&certs.client_key, &key.serialize_pem())?;

        let mut serving = CertificateParams::default();
        serving.distinguished_name = dn(&identity, &["system:nodes"]);
        let name = node
            .to_string()
            .try_into()
            .map_err(|source| cert_error("a kubelet serving certificate's DNS name", source))?;
        serving.subject_alt_names = vec![SanType::IpAddress(ip), SanType::DnsName(name)];
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        serving.use_authority_key_identifier_extension = true;
        let what = format!("the kubelet serving certificate for {node}");
        let key = key_pair(&what)?;
        let cert = serving
            .signed_by(&key, &issuer)
            .map_err(|source| cert_error(&what, source))?;
        write(&certs.serving_cert, &cert.pem())?;
        write(&certs.serving_key, &key.serialize_pem())?;

        let config = kubeconfig(
            &identity,
            server,
            &self.ca_cert(),
            &certs.client_cert,
            &certs.client_key,
        );
        write(&certs.kubeconfig, &format!("{config:#}\n"))?;
        Ok(certs)
    }

    /// The CA as an issuer, from its files: its parameters are fixed ([`ca_params`]), so
    /// rebuilding them with the stored key yields the same issuer name and key identifier.
    fn ca_issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let path = self.ca_key();
        let pem = fs::read_to_string(&path).io_context("reading the CA key", &path)?;
        let key = KeyPair::from_pem(&pem).map_err(|source| cert_error("the CA key", source))?;
        Ok(Issuer::new(ca_params(), key))
    }

    /// The request-header (front-proxy) CA certificate (PEM).
    pub fn front_proxy_ca_cert(&self) -> PathBuf {
        self.dir.join("front-proxy-ca.crt")
    }

    /// The API server's client certificate towards aggregated API servers (PEM; CN
    /// [`FRONT_PROXY_CLIENT`], signed by the front-proxy CA).
    pub fn front_proxy_client_cert(&self) -> PathBuf {
        self.dir.join("front-proxy-client.crt")
    }

    /// The key of [`Pki::front_proxy_client_cert`] (PEM, PKCS#8).
    pub fn front_proxy_client_key(&self) -> PathBuf {
        self.dir.join("front-proxy-client.key")
    }

    /// The service-account signing key (PEM, PKCS#8, ECDSA P-256).
    pub fn service_account_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }

    /// The service-account verification key (PEM, SubjectPublicKeyInfo).
    pub fn service_account_public_key(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }

    /// A user's client certificate (PEM).
    pub fn client_cert(&self, user: User) -> PathBuf {
        self.dir.join(format!("{}.crt", user.file_stem()))
    }

    /// A user's client key (PEM, PKCS#8).
    pub fn client_key(&self, user: User) -> PathBuf {
        self.dir.join(format!("{}.key", user.file_stem()))
    }

    /// Writes a kubeconfig for `user` that reaches `server` (an `https://` URL) and returns its
    /// path. The file references the certificates by path (JSON is valid kubeconfig YAML).
    pub fn write_kubeconfig(&self, user: User, server: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("{}.kubeconfig", user.file_stem()));
        let config = kubeconfig(
            user.name(),
            server,
            &self.ca_cert(),
            &self.client_cert(user),
            &self.client_key(user),
        );
        write(&path, &format!("{config:#}\n"))?;
        Ok(path)
    }

    /// Writes a kubeconfig at `path` that reaches `server` as `user` with the bearer `token`
    /// (an agent's node-bound ServiceAccount token, see [`crate::identity`]).
    pub fn write_token_kubeconfig(
        &self,
        user: &str,
        server: &str,
        token: &str,
        path: &Path,
    ) -> Result<()> {
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "ferry-e2e",
                "cluster": { "server": server, "certificate-authority": self.ca_cert() },
            }],
            "users": [{ "name": user, "user": { "token": token } }],
            "contexts": [{
                "name": "ferry-e2e",
                "context": { "cluster": "ferry-e2e", "user": user },
            }],
            "current-context": "ferry-e2e",
        });
        write(path, &format!("{config:#}\n"))
    }
}

/// The files [`Pki::issue_node`] writes for a real node.
#[derive(Debug, Clone)]
pub struct NodeCerts {
    /// The kubelet's client certificate (`system:node:<node>`, group `system:nodes`).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// The kubelet's serving certificate (`tlsCertFile`).
    pub serving_cert: PathBuf,
    /// Its key (`tlsPrivateKeyFile`).
    pub serving_key: PathBuf,
    /// A kubeconfig with the client certificate (`kubelet --kubeconfig`).
    pub kubeconfig: PathBuf,
}

/// A kubeconfig (JSON is valid kubeconfig YAML) that references the certificates by path.
fn kubeconfig(user: &str, server: &str, ca: &Path, cert: &Path, key: &Path) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "ferry-e2e",
            "cluster": { "server": server, "certificate-authority": ca },
        }],
        "users": [{
            "name": user,
            "user": { "client-certificate": cert, "client-key": key },
        }],
        "contexts": [{
            "name": "ferry-e2e",
            "context": { "cluster": "ferry-e2e", "user": user },
        }],
        "current-context": "ferry-e2e",
    })
}

/// The CA's parameters: fixed, so that [`Pki::ca_issuer`] can rebuild the issuer from the key.
fn ca_params() -> CertificateParams {
    let mut ca = CertificateParams::default();
    ca.distinguished_name = dn("ferry-e2e-ca", &[]);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = ca_usages();
    ca
}

fn ca_usages() -> Vec<KeyUsagePurpose> {
    vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ]
}

fn key_pair(what: &str) -> Result<KeyPair> {
    KeyPair::generate().map_err(|source| cert_error(what, source))
}

fn dn(common_name: &str, organisations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for org in organisations {
        dn.push(DnType::OrganizationName, *org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn cert_error(what: &str, source: rcgen::Error) -> Error {
    Error::Certificate {
        what: what.to_string(),
        source,
    }
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).io_context("writing a PKI file", path)
}
