//! Removing the checkpoint images the containerd runtime imported, once nothing needs them.
//!
//! A restore in containerd mode imports one image per container
//! (`localhost/ferry-checkpoint/<namespace>/<request>/<container>:<digest12>`, see
//! [`ferry_api::names::checkpoint_image`]), as large as the checkpoint itself (GPU memory
//! included). The restored pod runs it, and the kubelet needs it again whenever it recreates
//! that container, so the image stays while either
//! - a store still holds the ferry image it was made from (its digest starts with the tag):
//!   a Restore task may still import it or the kubelet may not have created the pod yet; or
//! - a pod sandbox of the request's restored pod exists on this node (containerd's CRI labels
//!   each sandbox with the pod's namespace and labels, and the restored pod carries
//!   `ferry.dev/checkpoint-request`).
//!
//! Otherwise it is removed, with the `sha256:<id>` alias the CRI plugin adds for every image it
//! sees (when no other name points at the same content), and containerd's own garbage
//! collection frees the content. Anything unclear (a `ctr` failure, an unreadable store) keeps
//! every image this round.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use ferry_api::names::{checkpoint_image, label};

use crate::runtime::containerd::ctr::Ctr;
use crate::runtime::error::Result;
use crate::store::Stores;

/// One image name in containerd and the content (index or manifest) it points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageName {
    /// The reference (`localhost/...:tag`, or `sha256:<id>` for the CRI's aliases).
    pub reference: String,
    /// `sha256:...` of the target descriptor.
    pub digest: String,
}

/// The names in `ctr images ls` output (columns REF TYPE DIGEST ...; the header skipped).
pub fn parse_images_ls(text: &str) -> Vec<ImageName> {
    text.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            match cols.as_slice() {
                [reference, _kind, digest, ..]
                    if *reference != "REF" && digest.starts_with("sha256:") =>
                {
                    Some(ImageName {
                        reference: reference.to_string(),
                        digest: digest.to_string(),
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// The parts of a checkpoint image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRef<'a> {
    pub namespace: &'a str,
    pub request: &'a str,
    pub container: &'a str,
    /// The first 12 hex digits of the ferry image's digest.
    pub tag: &'a str,
}

/// `Some` for a reference [`checkpoint_image::reference`] made.
pub fn parse_checkpoint_ref(reference: &str) -> Option<CheckpointRef<'_>> {
    let rest = reference
        .strip_prefix(checkpoint_image::PREFIX)?
        .strip_prefix('/')?;
    let (path, tag) = rest.rsplit_once(':')?;
    let mut parts = path.split('/');
    let (Some(namespace), Some(request), Some(container), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some(CheckpointRef {
        namespace,
        request,
        container,
        tag,
    })
}

/// The references to remove: the checkpoint images `keep` does not hold on to, and the
/// `sha256:` aliases whose content only doomed names pointed at.
pub fn plan(images: &[ImageName], keep: impl Fn(&CheckpointRef<'_>) -> bool) -> Vec<String> {
    let mut doomed: BTreeSet<&str> = BTreeSet::new();
    for image in images {
        if let Some(r) = parse_checkpoint_ref(&image.reference)
            && !keep(&r)
        {
            doomed.insert(&image.reference);
        }
    }
    // Per content: does a name that stays (not doomed, not an alias) point at it?
    let mut named: BTreeMap<&str, bool> = BTreeMap::new();
    for image in images {
        if image.reference.starts_with("sha256:") {
            continue;
        }
        let stays = !doomed.contains(image.reference.as_str());
        *named.entry(&image.digest).or_default() |= stays;
    }
    let mut out: Vec<String> = doomed.iter().map(|r| r.to_string()).collect();
    for image in images {
        if image.reference.starts_with("sha256:")
            && named.get(image.digest.as_str()) == Some(&false)
        {
            out.push(image.reference.clone());
        }
    }
    out
}

/// One GC round on this node's containerd: what was removed.
pub fn collect(ctr: &Ctr, stores: &Stores, limit: Duration) -> Result<Vec<String>> {
    let images = parse_images_ls(&ctr.query(&["images", "ls"], limit)?);
    if !images
        .iter()
        .any(|i| parse_checkpoint_ref(&i.reference).is_some())
    {
        return Ok(Vec::new());
    }
    // Tags of the images the store still holds (partials have no digest yet; a pull that
    // resumes re-imports under the same name).
    let mut held = HashSet::new();
    for store in stores.all() {
        for entry in store.list()?.into_iter().filter(|e| !e.partial) {
            let image = store.open_image(&entry.location)?;
            held.insert(image.digest.chars().take(12).collect::<String>());
        }
    }
    let mut has_pod: BTreeMap<(String, String), bool> = BTreeMap::new();
    for image in &images {
        let Some(r) = parse_checkpoint_ref(&image.reference) else {
            continue;
        };
        let key = (r.namespace.to_string(), r.request.to_string());
        if held.contains(r.tag) || has_pod.contains_key(&key) {
            continue;
        }
        let filter = format!(
            "labels.\"{}\"=={},labels.\"io.kubernetes.pod.namespace\"=={}",
            label::CHECKPOINT_REQUEST,
            r.request,
            r.namespace
        );
        let sandboxes = ctr.query(&["containers", "ls", "-q", &filter], limit)?;
        has_pod.insert(key, !sandboxes.trim().is_empty());
    }
    let doomed = plan(&images, |r| {
        held.contains(r.tag)
            || has_pod
                .get(&(r.namespace.to_string(), r.request.to_string()))
                .copied()
                .unwrap_or(true)
    });
    if !doomed.is_empty() {
        ctr.remove_images(&doomed, limit)?;
    }
    Ok(doomed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LS: &str = "\
REF                                                                   TYPE                                    DIGEST                                                                  SIZE      PLATFORMS   LABELS
localhost/ferry-checkpoint/default/move-counter/counter:53fcc1d8b382 application/vnd.oci.image.index.v1+json sha256:aaaa000000000000000000000000000000000000000000000000000000000001 1.2 MiB linux/amd64 -
localhost/ferry-checkpoint/ml/old/trainer:0123456789ab                application/vnd.oci.image.index.v1+json sha256:bbbb000000000000000000000000000000000000000000000000000000000002 9.0 GiB linux/amd64 -
localhost/ferry/counter:latest                                        application/vnd.oci.image.index.v1+json sha256:cccc000000000000000000000000000000000000000000000000000000000003 800 KiB linux/amd64 io.cri-containerd.image=managed
sha256:05f708155c4745a634e4cf2e5db72fb182bd1281bbbb5547eac327ef9aa6d33f application/vnd.oci.image.index.v1+json sha256:aaaa000000000000000000000000000000000000000000000000000000000001 1.2 MiB linux/amd64 io.cri-containerd.image=managed
sha256:1111111111111111111111111111111111111111111111111111111111111111 application/vnd.oci.image.index.v1+json sha256:bbbb000000000000000000000000000000000000000000000000000000000002 9.0 GiB linux/amd64 io.cri-containerd.image=managed
sha256:2222222222222222222222222222222222222222222222222222222222222222 application/vnd.oci.image.index.v1+json sha256:cccc000000000000000000000000000000000000000000000000000000000003 800 KiB linux/amd64 io.cri-containerd.image=managed
";

    #[test]
    fn ctr_images_ls_is_read_by_column() {
        let images = parse_images_ls(LS);
        assert_eq!(images.len(), 6);
        assert_eq!(
            images[0],
            ImageName {
                reference: "localhost/ferry-checkpoint/default/move-counter/counter:53fcc1d8b382"
                    .into(),
                digest: "sha256:aaaa000000000000000000000000000000000000000000000000000000000001"
                    .into(),
            }
        );
        assert!(parse_images_ls("REF TYPE DIGEST SIZE PLATFORMS LABELS\n").is_empty());
    }

    #[test]
    fn only_references_ferry_made_parse() {
        let reference = checkpoint_image::reference("ns", "req", "c", "0123456789abcdef");
        let r = parse_checkpoint_ref(&reference).unwrap();
        assert_eq!(
            r,
            CheckpointRef {
                namespace: "ns",
                request: "req",
                container: "c",
                tag: "0123456789ab"
            }
        );
        for other in [
            "localhost/ferry/counter:latest",
            "localhost/ferry-checkpointX/ns/req/c:tag",
            "localhost/ferry-checkpoint/ns/req:tag",
            "localhost/ferry-checkpoint/ns/req/c/extra:tag",
            "localhost/ferry-checkpoint/ns/req/c",
            "sha256:05f708155c47",
        ] {
            assert_eq!(parse_checkpoint_ref(other), None, "{other}");
        }
    }

    #[test]
    fn unneeded_checkpoint_images_go_with_their_aliases_and_nothing_else() {
        let images = parse_images_ls(LS);
        // Nothing keeps "ml/old": it and its alias go; the counter image and the kept
        // checkpoint image (and their aliases) stay.
        let doomed = plan(&images, |r| r.request == "move-counter");
        assert_eq!(
            doomed,
            [
                "localhost/ferry-checkpoint/ml/old/trainer:0123456789ab",
                "sha256:1111111111111111111111111111111111111111111111111111111111111111",
            ]
        );
        assert!(plan(&images, |_| true).is_empty());
        assert_eq!(plan(&images, |_| false).len(), 4);
    }

    #[test]
    fn an_alias_shared_with_a_name_that_stays_is_kept() {
        let mut images = parse_images_ls(LS);
        // Someone tagged the old checkpoint image's content under another name.
        images.push(ImageName {
            reference: "registry.example/keep:me".into(),
            digest: "sha256:bbbb000000000000000000000000000000000000000000000000000000000002"
                .into(),
        });
        let doomed = plan(&images, |r| r.request == "move-counter");
        assert_eq!(
            doomed,
            ["localhost/ferry-checkpoint/ml/old/trainer:0123456789ab"]
        );
    }
}
