//! The AMDGPU backend's hooks on a machine without an AMD GPU: it stays out of the way
//! (probe false, every fd/VMA/image "not mine"), and its restore-side errors say what is
//! wrong. Device paths are pointed at a temp dir, so these hold on GPU nodes too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsFd;
use std::sync::Mutex;

use ferry_api::plugin_env::{FERRY_AMDGPU_DEV, FERRY_KFD_TOPOLOGY};
use ferry_api::stats::{GpuVendor, Operation, PluginStats};
use ferry_criu_plugin::backends::amdgpu::config::AmdConfig;
use ferry_criu_plugin::backends::amdgpu::proto::CriuRenderNode;
use ferry_criu_plugin::backends::amdgpu::{AmdgpuBackend, images, normalise_path};
use ferry_criu_plugin::config::Config;
use ferry_criu_plugin::contract::{Backend, Claim, CopyPlan, Ctx, Refill, Stage};
use ferry_criu_plugin::host::Host;

struct NoRefill;

impl Refill for NoRefill {
    fn refill(
        &self,
        _cx: &Ctx<'_>,
        _backend: &dyn Backend,
        _plan: CopyPlan,
    ) -> ferry_criu_plugin::Result<()> {
        panic!("nothing to refill without a GPU")
    }
}

struct World {
    dev: tempfile::TempDir,
    _images: tempfile::TempDir,
    config: Config,
    host: Host,
    stats: Mutex<PluginStats>,
}

impl World {
    fn new() -> World {
        let images = tempfile::tempdir().unwrap();
        World {
            dev: tempfile::tempdir().unwrap(),
            host: Host::new(Some(images.path().to_path_buf())),
            _images: images,
            config: Config::default(),
            stats: Mutex::new(PluginStats::new(Operation::Restore, GpuVendor::None)),
        }
    }

    fn cx(&self, stage: Stage) -> Ctx<'_> {
        Ctx {
            stage,
            config: &self.config,
            host: &self.host,
            stats: &self.stats,
            refill: &NoRefill,
        }
    }

    fn backend(&self) -> AmdgpuBackend {
        let dev = self.dev.path().to_string_lossy().into_owned();
        let topo = self
            .dev
            .path()
            .join("no-topology")
            .to_string_lossy()
            .into_owned();
        AmdgpuBackend::new(AmdConfig::from_lookup(|k| match k {
            FERRY_AMDGPU_DEV => Some(dev.clone()),
            FERRY_KFD_TOPOLOGY => Some(topo.clone()),
            _ => None,
        }))
    }
}

#[test]
fn probe_is_false_without_dev_kfd_in_every_stage() {
    let w = World::new();
    let b = w.backend();
    for stage in [Stage::Dump, Stage::PreDump, Stage::Restore] {
        assert!(!b.probe(&w.cx(stage)).unwrap(), "{stage:?}");
    }
}

#[test]
fn probe_is_false_on_this_machine_when_it_has_no_dev_kfd() {
    if std::path::Path::new("/dev/kfd").exists() {
        eprintln!("skipped: this machine has /dev/kfd");
        return;
    }
    let w = World::new();
    let b = AmdgpuBackend::from_env();
    assert!(!b.probe(&w.cx(Stage::Dump)).unwrap());
}

#[test]
fn fds_that_are_not_amd_devices_are_not_claimed() {
    let w = World::new();
    let b = w.backend();
    let null = std::fs::File::open("/dev/null").unwrap();
    let file = tempfile::tempfile().unwrap();
    assert_eq!(
        b.dump_file(&w.cx(Stage::Dump), null.as_fd(), 1).unwrap(),
        Claim::NotMine
    );
    assert_eq!(
        b.dump_file(&w.cx(Stage::Dump), file.as_fd(), 2).unwrap(),
        Claim::NotMine
    );
}

#[test]
fn restore_of_an_ext_file_without_amdgpu_images_is_not_claimed() {
    let w = World::new();
    let b = w.backend();
    assert!(b.restore_file(&w.cx(Stage::Restore), 17).unwrap().is_none());
}

#[test]
fn a_render_node_restored_before_its_kfd_fd_fails_with_the_reason() {
    let w = World::new();
    let b = w.backend();
    images::write_message(
        &w.host,
        &images::render_node_image(5),
        &CriuRenderNode {
            gpu_id: 0x1234,
            ..Default::default()
        },
    )
    .unwrap();
    let e = b
        .restore_file(&w.cx(Stage::Restore), 5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("before the task's /dev/kfd fd"), "{e}");
}

#[test]
fn vma_updates_ignore_other_paths_and_unknown_mappings() {
    let w = World::new();
    let b = w.backend();
    let cx = w.cx(Stage::Restore);
    assert!(
        b.update_vma_map(&cx, "/usr/lib/libc.so.6", 0x1000, 0)
            .unwrap()
            .is_none()
    );
    let kfd = format!("/{}/kfd", w.dev.path().display());
    assert!(b.update_vma_map(&cx, &kfd, 0x1000, 0).unwrap().is_none());
}

#[test]
fn resume_without_dev_kfd_is_not_claimed() {
    let w = World::new();
    let b = w.backend();
    assert_eq!(
        b.resume_devices_late(&w.cx(Stage::Restore), 1).unwrap(),
        Claim::NotMine
    );
}

#[test]
fn double_slashes_in_vma_paths_are_collapsed() {
    assert_eq!(
        normalise_path("//dev/dri//renderD128"),
        "/dev/dri/renderD128"
    );
    assert_eq!(normalise_path("/dev/kfd"), "/dev/kfd");
}
