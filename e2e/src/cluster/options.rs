//! What a test cluster starts besides etcd and kube-apiserver.

/// What to start besides etcd and kube-apiserver.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Start kube-controller-manager and kube-scheduler (service accounts, namespace deletion,
    /// garbage collection, node lifecycle, pod scheduling).
    pub controllers: bool,
    /// Start kwok, which keeps simulated nodes Ready and runs pods bound to them (on paper).
    pub kwok: bool,
    /// Create this many kwok nodes during start-up and wait until they are Ready (implies `kwok`).
    pub kwok_nodes: usize,
    /// Start this many real kubelet + containerd nodes (`ferry-node-a`, `ferry-node-b`, ...)
    /// and wait until they are Ready (implies `controllers`: pods need the scheduler and
    /// service accounts). See [`crate::node`].
    pub real_nodes: usize,
    /// Do not apply `manifests/crds/` (they are applied by default).
    pub skip_crds: bool,
}

impl Options {
    /// etcd, kube-apiserver and ferry's CRDs: up in seconds.
    pub fn control_plane() -> Self {
        Self::default()
    }

    /// Also start kube-controller-manager and kube-scheduler.
    pub fn with_controllers(mut self) -> Self {
        self.controllers = true;
        self
    }

    /// Also start kwok.
    pub fn with_kwok(mut self) -> Self {
        self.kwok = true;
        self
    }

    /// Also start kwok and create `count` Ready kwok nodes.
    pub fn with_kwok_nodes(mut self, count: usize) -> Self {
        self.kwok = true;
        self.kwok_nodes = count;
        self
    }

    /// Also start the controllers and `count` real kubelet + containerd nodes.
    pub fn with_real_nodes(mut self, count: usize) -> Self {
        self.controllers = true;
        self.real_nodes = count;
        self
    }
}
