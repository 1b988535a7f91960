//! The validation that the CRDs' OpenAPI schemas carry: name patterns, length limits and CEL
//! rules with their messages. The CRD types attach these; tests read them back out of the
//! generated schema and check what they accept.
//!
//! Plain constants, available without the `crd` feature, so the agent and operator can
//! refer to the same limits.

/// DNS-1123 subdomain (RFC 1123 host name): lower-case alphanumerics, `-` and `.`, starting
/// and ending alphanumeric. Kubernetes validates pod, node, PVC and Secret names with this
/// flavour (`IsDNS1123Subdomain`), so a reference to one of those objects must allow dots
/// and up to [`DNS1123_SUBDOMAIN_MAX_LENGTH`] characters.
pub const DNS1123_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Maximum length of a DNS-1123 subdomain.
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: u32 = 253;

/// DNS-1123 label: one subdomain segment, no dots. Kubernetes validates container names and
/// namespace names with this stricter flavour (`IsDNS1123Label`), so a subdomain pattern
/// would accept container names that no pod can have.
pub const DNS1123_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Maximum length of a DNS-1123 label.
pub const DNS1123_LABEL_MAX_LENGTH: u32 = 63;

/// A SHA-256 digest in lower-case hex.
pub const SHA256_HEX_PATTERN: &str = r"^[0-9a-f]{64}$";

/// A key in a Secret's `data` (`IsConfigMapKey`).
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

/// Longest file system path accepted (Linux `PATH_MAX`). It also bounds the cost that the
/// API server estimates for the CEL path rules: without it the `split` rules exceed the
/// per-rule budget and the API server refuses the whole CRD.
pub const PATH_MAX_LENGTH: u32 = 4096;

/// Bounds of `spec.timeoutSeconds`: at least 10 s (a checkpoint never finishes faster),
/// at most one day.
pub const TIMEOUT_SECONDS_MIN: i32 = 10;
/// Upper bound of `spec.timeoutSeconds`.
pub const TIMEOUT_SECONDS_MAX: i32 = 86_400;

/// Containers per request: far above any real pod, low enough that a bad client cannot
/// store a huge list in a request.
pub const MAX_CONTAINERS: u32 = 64;
/// Entries of `spec.migrate.nodeSelector`, bounded for the same reason as [`MAX_CONTAINERS`].
pub const MAX_NODE_SELECTOR_ENTRIES: u32 = 64;
/// Longest label value (a `nodeSelector` value).
pub const LABEL_VALUE_MAX_LENGTH: u32 = 63;

/// A CEL validation rule and the message the API server returns when it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CelRule {
    /// The CEL expression, evaluated with `self` bound to the field it is attached to.
    pub rule: &'static str,
    /// What the user reads when the rule rejects their object: what is wrong and what to do.
    pub message: &'static str,
}

#[cfg(feature = "crd")]
impl From<CelRule> for kube::core::Rule {
    fn from(r: CelRule) -> Self {
        kube::core::Rule::new(r.rule).message(r.message)
    }
}

/// On `CheckpointRequest.spec`: a request is a one-shot command; changing it while the
/// operator acts on it would leave a half-done checkpoint that matches neither spec.
pub const SPEC_IMMUTABLE: CelRule = CelRule {
    rule: "self == oldSelf",
    message: "spec is immutable: create a new CheckpointRequest",
};

/// On the CheckpointRequest root: request names become the value of the
/// `ferry.dev/checkpoint-request` label, and label values are at most 63 characters.
pub const REQUEST_NAME_LENGTH: CelRule = CelRule {
    rule: "self.metadata.name.size() <= 63",
    message: "metadata.name must be at most 63 characters: it is used as a label value",
};

/// On `storage`: the image store is either a host directory or a PVC, never both or none.
/// `has()` and not the values: a `null` member is pruned by the API server (members are not
/// nullable), so `has()` sees only members that are really set.
pub const STORAGE_EXACTLY_ONE: CelRule = CelRule {
    rule: "has(self.hostPath) != has(self.pvc)",
    message: "exactly one of storage.hostPath and storage.pvc must be set",
};

/// On `storage.hostPath.path`.
pub const HOST_PATH_ABSOLUTE: CelRule = CelRule {
    rule: "self.startsWith('/')",
    message: "hostPath.path must be an absolute path (start with '/')",
};

/// On `storage.hostPath.path`: a `..` segment could climb out of the directory that the
/// agent's DaemonSet mounts and that operators audit.
pub const HOST_PATH_NO_DOTDOT: CelRule = CelRule {
    rule: "!self.split('/').exists(s, s == '..')",
    message: "hostPath.path must not contain a '..' segment",
};

/// On `storage.pvc.subPath`: it is joined to the volume's mount point.
pub const SUB_PATH_RELATIVE: CelRule = CelRule {
    rule: "!self.startsWith('/')",
    message: "pvc.subPath must be a relative path (not start with '/')",
};

/// On `storage.pvc.subPath`: a `..` segment could reach outside the volume's directory.
pub const SUB_PATH_NO_DOTDOT: CelRule = CelRule {
    rule: "!self.split('/').exists(s, s == '..')",
    message: "pvc.subPath must not contain a '..' segment",
};

/// On `NodeTask.spec.image.location`, for the same reasons as the subPath rules.
pub const LOCATION_RELATIVE: CelRule = CelRule {
    rule: "!self.startsWith('/') && !self.split('/').exists(s, s == '..')",
    message: "image.location must be a relative path without a '..' segment",
};

/// On `NodeTask.spec.source.endpoint`: images travel agent to agent over TLS only.
pub const ENDPOINT_HTTPS: CelRule = CelRule {
    rule: "self.startsWith('https://')",
    message: "source.endpoint must be an https:// URL",
};
