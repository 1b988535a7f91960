//! Issue #19's placeholder restore with real runc, real CRIU, ferry's plugin and the sim GPU:
//! a runc container running `ferry-sim-workload` is checkpointed with the agent's `Runc`; a
//! second runc container, the placeholder, runs `ferry-supervisor run`; the agent's
//! `PlaceholderRestore` restores the first into the second. Plus a damaged image: the restore
//! fails, the supervisor is told and exits 71, the image is left as it was.
//!
//! The containers are plain runc (no containerd, no kubelet): each has its own pid, mount,
//! IPC and UTS namespaces, a network namespace given by path (`ip netns`), as a pod's is, and
//! its stdout on a pipe (the source's is the test's pipe, as `runc run -d` with a shim; the
//! placeholder runs `runc run` in the foreground, whose stdio are runc's own pipes copied to the
//! test, and whose exit status is the container's).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod placeholder_common;
mod runtime_common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use ferry_agent::runtime::checkpoint::{CheckpointJob, Checkpointer, ContainerTarget};
use ferry_agent::runtime::criu::Criu;
use ferry_agent::runtime::placeholder::{Placeholder, PlaceholderRestore};
use ferry_agent::runtime::restore::{RestoreJob, RestoreTarget, Restorer};
use ferry_agent::runtime::runc::Runc;
use ferry_agent::store::{Image, ImageSource, Store};
use ferry_api::stats::{Operation, RestoreMode};
use placeholder_common::*;
use runtime_common::*;

/// One container test at a time (2 cores; CRIU runs are heavy).
static SERIAL: Mutex<()> = Mutex::new(());

fn checkpoint(runc: &Runc, store: &Store, id: &str, env: Vec<(String, String)>) -> Image {
    let mut job = CheckpointJob::new(
        ImageSource {
            node: "node-a".into(),
            namespace: "default".into(),
            pod: "sim".into(),
            containers: vec![],
        },
        vec![ContainerTarget::Runc {
            name: "app".into(),
            id: id.into(),
        }],
    );
    job.env = env;
    let staging = store.stage(&format!("default/sim/{id}")).unwrap();
    let out = runc
        .checkpoint(&job, &staging)
        .expect("runc checkpoint through the agent");
    let manifest = staging.build_manifest(out.meta).unwrap();
    staging.publish(&manifest).unwrap()
}

/// Scratch, store, runc (its CRIU with ferry's plugin through the container's annotation),
/// a sim dir. Fields drop in order: containers before the scratch dir with their state.
struct Setup {
    containers: RuncContainers,
    store: Store,
    runc: Runc,
    libdir: PathBuf,
    sim: PathBuf,
    tmp: tempfile::TempDir,
}

fn setup() -> Setup {
    require(&[
        "criu",
        "runc",
        "busybox",
        "/usr/sbin/iptables",
        "/usr/sbin/ip",
        "/usr/bin/nsenter",
    ]);
    let tmp = scratch();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let root = tmp.path().join("runc-root");
    let libdir = plugin_libdir(tmp.path());
    let runc = Runc::new(RUNC, &root, Criu::new(CRIU));
    let sim = tmp.path().join("sim");
    std::fs::create_dir_all(&sim).unwrap();
    Setup {
        containers: RuncContainers::new(root),
        store,
        runc,
        libdir,
        sim,
        tmp,
    }
}

impl Setup {
    /// A bundle in `<tmp>/<tag>` whose CRIU config names ferry's plugin dir.
    fn bundle(&self, tag: &str, netns: &NetNs, args: serde_json::Value) -> PathBuf {
        let dir = self.tmp.path().join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        let b = bundle(&dir, &self.sim, &netns.path(), args);
        let conf = dir.join("criu.conf");
        std::fs::write(&conf, ferry_agent::runtime::runc::criu_config(&self.libdir)).unwrap();
        let path = b.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        spec["annotations"][ferry_agent::runtime::runc::CRIU_CONFIG_ANNOTATION] =
            conf.display().to_string().into();
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        b
    }

    /// The placeholder: the same kind of bundle running the supervisor, its control dir bound
    /// from a host dir, its own network namespace.
    fn placeholder(&self, netns: &NetNs, id: &str) -> (Foreground, Placeholder, i32) {
        let b = self.bundle(
            "placeholder",
            netns,
            serde_json::json!([
                "/bin/ferry-supervisor",
                "run",
                "--control",
                CONTROL,
                "--timeout",
                "5m"
            ]),
        );
        let control = self.tmp.path().join("control");
        std::fs::create_dir_all(&control).unwrap();
        add_bind(&b, &control, CONTROL);
        self.containers.track(id);
        let fg = Foreground::start(&self.containers.root, id, &b);
        wait_for("the supervisor to wait", Duration::from_secs(30), || {
            std::fs::read_to_string(control.join("state")).is_ok_and(|s| s == "waiting\n")
        });
        let pid = init_pid(&self.containers, id);
        let ph = Placeholder {
            host_pid: pid,
            rootfs: b.join("rootfs"),
            control_dir: control,
            netns: netns.path(),
            ext_mounts: vec![],
        };
        (fg, ph, pid)
    }

    fn restorer(&self) -> PlaceholderRestore {
        PlaceholderRestore::new(Criu::new(CRIU).with_libdir(&self.libdir))
    }

    fn restore_job(&self, ph: &Placeholder, work: &str) -> RestoreJob {
        let mut job = RestoreJob::new(self.tmp.path().join(work));
        job.parallel_restore = true;
        job.env = SimWorkload::env(&self.sim);
        job.containers = vec![RestoreTarget::Placeholder {
            name: "app".into(),
            placeholder: ph.clone(),
        }];
        job
    }
}

/// The sim dir's device memory and handles, dropped as a move to another node drops them
/// (the directories stay: they are bind-mount sources).
fn wipe_devices(sim: &Path) {
    for d in [sim.join("sim-mem"), sim.join("sim-root/ctx")] {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
    }
}

#[test]
fn a_sim_gpu_runc_container_restores_into_a_supervised_placeholder() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let (src_ns, ph_ns) = (NetNs::new("src"), NetNs::new("ph"));

    // The source: the workload in a runc container, stdout on our pipe.
    let src = s.bundle("source", &src_ns, workload_args(&s.sim));
    let id = unique_id("sim");
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    let src_out = Collected::default();
    src_out.drain(std::fs::File::from(rd));
    s.containers.run_with_stdout(&id, &src, Stdio::from(wr));
    wait_for("the workload's status", Duration::from_secs(60), || {
        s.sim.join("status.json").exists()
    });
    wait_for("a few ticks", Duration::from_secs(30), || {
        src_out.ticks().len() >= 5
    });
    let before = verify(&s.sim);
    assert!(before.host_ok && before.devices_ok == [true], "{before:?}");

    let image = checkpoint(&s.runc, &s.store, &id, SimWorkload::env(&s.sim));
    let dump_log = std::fs::read_to_string(image.dir.join("app/dump.log")).unwrap();
    assert!(
        dump_log.contains("ferry: plugin initialised stage=Dump"),
        "ferry's plugin did not dump"
    );
    assert!(
        image.dir.join("app/ferry-dump-stats.json").exists(),
        "no device dumped"
    );
    let published = snapshot(&image.dir);
    assert_eq!(s.containers.state(&id), None, "the source still runs");
    // The source's writer is gone; what it printed is complete once its pipe is drained.
    std::thread::sleep(Duration::from_millis(300));
    let src_ticks = src_out.ticks();
    assert_eq!(src_ticks, (1..=src_ticks.len() as u64).collect::<Vec<_>>());
    wipe_devices(&s.sim);

    // The placeholder, then the agent's restore into it.
    let ph_id = unique_id("ph");
    let (mut fg, ph, sup) = s.placeholder(&ph_ns, &ph_id);
    let probe = || {
        s.containers
            .runc(&[
                "exec",
                &ph_id,
                "/bin/ferry-supervisor",
                "probe",
                "--control",
                CONTROL,
            ])
            .status
            .success()
    };
    assert!(!probe(), "the probe passed before the restore");
    let job = s.restore_job(&ph, "work");
    let out = s.restorer().restore(&job, &image).unwrap_or_else(|e| {
        let log = match &e {
            ferry_agent::runtime::RuntimeError::Tool { log, .. } => {
                std::fs::read_to_string(log).unwrap_or_default()
            }
            _ => String::new(),
        };
        let mut tail: Vec<&str> = log.lines().rev().take(60).collect();
        tail.reverse();
        panic!(
            "placeholder restore: {e}\nsupervisor: {}\nCRIU log tail:\n{}",
            fg.stderr.text(),
            tail.join("\n")
        )
    });
    let r = &out.restored[0];
    let root = r.pid.expect("the restored root's host pid");
    let _guard = KillOnDrop(root);

    // Parent, pid namespaces, cgroups, network namespace, stdout.
    assert_eq!(
        field(root, "PPid:"),
        sup.to_string(),
        "the supervisor is not the parent"
    );
    let nspid: Vec<String> = field(root, "NSpid:")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        nspid.len(),
        3,
        "NSpid {nspid:?}: host / placeholder / nested"
    );
    assert_eq!(nspid[2], "1");
    let restored_file = std::fs::read_to_string(s.tmp.path().join("control/restored")).unwrap();
    assert_eq!(
        restored_file.trim(),
        nspid[1],
        "control file names the pid in the placeholder's namespace"
    );
    let cg = |p: i32| std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap();
    eprintln!(
        "placeholder cgroups:\n{}restored root cgroups:\n{}",
        cg(sup),
        cg(root)
    );
    assert_eq!(
        cg(root),
        cg(sup),
        "the restored root is not in every cgroup of the placeholder"
    );
    assert!(
        cg(root)
            .lines()
            .any(|l| l.contains(":memory:") && l.ends_with(&ph_id))
    );
    // On a hybrid host where runc also placed the placeholder in the unified hierarchy
    // (`0::/<id>`), the equality above proves the join wrote the unified `cgroup.procs` too.
    let v2 = cg(sup)
        .lines()
        .any(|l| l.starts_with("0::") && l.ends_with(&ph_id));
    eprintln!("unified (v2) placement of the placeholder asserted: {v2}");
    let ns = |p: i32, n: &str| link(format!("/proc/{p}/ns/{n}"));
    assert_eq!(ns(root, "net"), ns(sup, "net"));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        ns(root, "net"),
        format!("net:[{}]", std::fs::metadata(ph_ns.path()).unwrap().ino())
    );
    assert_eq!(
        link(format!("/proc/{root}/fd/1")),
        link(format!("/proc/{sup}/fd/1"))
    );
    assert!(link(format!("/proc/{root}/fd/1")).starts_with("pipe:"));

    // The output goes on in the placeholder's log from where the source stopped.
    wait_for(
        "ticks in the placeholder's log",
        Duration::from_secs(30),
        || fg.stdout.ticks().len() >= 5,
    );
    let ph_ticks = fg.stdout.ticks();
    let all: Vec<u64> = src_ticks.iter().chain(ph_ticks.iter()).copied().collect();
    assert_eq!(
        all,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "source {src_ticks:?} then placeholder {ph_ticks:?}"
    );

    // Host and device memory as the workload left them; its step counter went on.
    let after = verify(&s.sim);
    assert!(after.host_ok, "host memory differs after restore");
    assert_eq!(
        after.devices_ok,
        [true],
        "device memory differs after restore"
    );
    assert!(
        after.counter > before.counter,
        "{} <= {}",
        after.counter,
        before.counter
    );
    assert_eq!(
        after.device_steps,
        [after.counter],
        "device memory's step lags the host's"
    );
    assert!(after.device_bytes > 0);
    assert_ne!(after.pid, 0);

    let stats = out
        .plugin_stats
        .clone()
        .expect("the plugin's restore stats");
    assert_eq!(stats.operation, Operation::Restore);
    assert_eq!(stats.vendor.as_str(), "sim");
    assert_eq!(stats.mode, RestoreMode::Parallel);
    assert_eq!(stats.total_bytes(), 8 << 20);
    assert!(out.host_restore.is_some() && out.gpu_restore.is_some());
    assert!(
        probe(),
        "the probe fails after the restore: {}",
        fg.stderr.text()
    );

    // SIGTERM to the placeholder reaches the workload; the container exits with its status.
    let killed = s.containers.runc(&["kill", &ph_id, "TERM"]);
    assert!(killed.status.success());
    let code = fg.exit_code(Duration::from_secs(30));
    assert_eq!(code, Some(3), "supervisor: {}", fg.stderr.text());
    assert_eq!(
        std::fs::read_to_string(s.tmp.path().join("control/state")).unwrap(),
        "exited code=3\n"
    );
    assert!(!alive(root));
    assert_image_intact(&s.store, &image, &published);
}

#[test]
fn a_damaged_image_fails_the_restore_and_the_supervisor_exits_71() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let (src_ns, ph_ns) = (NetNs::new("dsrc"), NetNs::new("dph"));
    let src = s.bundle(
        "source",
        &src_ns,
        serde_json::json!([
            "/bin/sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.1; done"
        ]),
    );
    let id = unique_id("dmg");
    let (rd, wr) = rustix::pipe::pipe().unwrap();
    let src_out = Collected::default();
    src_out.drain(std::fs::File::from(rd));
    s.containers.run_with_stdout(&id, &src, Stdio::from(wr));
    wait_for("a few ticks", Duration::from_secs(30), || {
        src_out.ticks().len() >= 3
    });
    let image = checkpoint(&s.runc, &s.store, &id, vec![]);
    let pstree = image.dir.join("app/pstree.img");
    std::fs::write(&pstree, b"not a CRIU image").unwrap();
    let damaged = snapshot(&image.dir);

    let ph_id = unique_id("dph");
    let (mut fg, ph, _sup) = s.placeholder(&ph_ns, &ph_id);
    let err = s
        .restorer()
        .restore(&s.restore_job(&ph, "work"), &image)
        .expect_err("a damaged image must not restore");
    eprintln!("placeholder restore error: {err}");
    let (tool, op, message, log) = tool_failure(&err);
    assert_eq!((tool, op), ("criu", "restore"));
    assert!(
        message.starts_with("criu: ") && message.contains("Error"),
        "{message}"
    );
    assert!(log.exists() && log.starts_with(s.tmp.path().join("work")));
    let failed = std::fs::read_to_string(s.tmp.path().join("control/failed")).unwrap();
    assert!(failed.contains("criu restore failed"), "{failed}");
    assert!(!s.tmp.path().join("control/restored").exists());
    assert_eq!(
        fg.exit_code(Duration::from_secs(30)),
        Some(71),
        "supervisor: {}",
        fg.stderr.text()
    );
    assert!(
        fg.stderr.text().contains("criu restore failed"),
        "{}",
        fg.stderr.text()
    );
    assert_eq!(
        snapshot(&image.dir),
        damaged,
        "the restore touched the image"
    );
}
