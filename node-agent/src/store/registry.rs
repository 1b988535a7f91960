//! The registry of an agent's stores ([`Stores`]): which host paths are stores, opened once.

use std::path::{Path, PathBuf};

use super::error::{Result, StoreError};
use super::root::Store;

/// The stores an agent uses: its main store (`--store`, which requests reach as the default
/// hostPath) and the other host paths it may use (`--allow-host-path`). The worker writes into
/// them and the transfer server reads from them through the same [`Stores::for_host_path`],
/// so an image is served from wherever it was written, and from nowhere else.
#[derive(Clone, Debug)]
pub struct Stores {
    main: Store,
    /// Each allowed host path as given, opened once.
    allowed: Vec<(PathBuf, Store)>,
}

impl From<Store> for Stores {
    fn from(main: Store) -> Self {
        Stores {
            main,
            allowed: Vec::new(),
        }
    }
}

impl Stores {
    /// `main` and the host paths in `allowed`, each opened (created if needed) here, so that
    /// serving and GC do not open them again.
    pub fn new(main: Store, allowed: Vec<PathBuf>) -> Result<Self> {
        let allowed = allowed
            .into_iter()
            .map(|p| Store::open(&p).map(|s| (p, s)))
            .collect::<Result<_>>()?;
        Ok(Stores { main, allowed })
    }

    /// The main store.
    pub fn main(&self) -> &Store {
        &self.main
    }

    /// The store a request's `hostPath` names (`None`: the main store). The default hostPath
    /// and the main store's own root are the main store; another path must be allowed.
    pub fn for_host_path(&self, host_path: Option<&str>) -> Result<Store> {
        let Some(path) = host_path else {
            return Ok(self.main.clone());
        };
        let wanted = Path::new(path);
        if wanted == Path::new(ferry_api::storage::DEFAULT_HOST_PATH) || wanted == self.main.root()
        {
            return Ok(self.main.clone());
        }
        if let Some((_, store)) = self.allowed.iter().find(|(p, _)| p == wanted) {
            return Ok(store.clone());
        }
        Err(StoreError::NotAStore {
            path: path.to_string(),
            allowed: self.list(),
        })
    }

    /// Every store: the main one first.
    pub fn all(&self) -> impl Iterator<Item = &Store> {
        std::iter::once(&self.main).chain(self.allowed.iter().map(|(_, s)| s))
    }

    /// The stores' roots, for messages.
    pub fn list(&self) -> String {
        std::iter::once(self.main.root())
            .chain(self.allowed.iter().map(|(p, _)| p.as_path()))
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
