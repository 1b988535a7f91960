//! The placeholder restore's command line, built from what `runc checkpoint` left in the
//! image (`descriptors.json`, `dump.log`) and the placeholder's identity. Pure: runs nothing.
//!
//! The command is an argv, no string is ever parsed by a shell: a fixed `sh` script joins the
//! placeholder's cgroups (its paths come as arguments), opens the inherited files on fixed fd
//! numbers and execs `nsenter -t <pid> -p -- unshare -m --propagation private sh -c 'mount -t
//! proc proc /proc && exec "$@"' … criu restore …`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::runtime::error::{Result, RuntimeError};

/// The key runc gives the container's network namespace when it was given by path (a pod's).
pub const NET_KEY: &str = "extRootNetNS";
/// fd of the placeholder's network namespace in CRIU.
const NET_FD: u32 = 3;
/// fds of the placeholder's stdin, stdout and stderr in CRIU.
const STDIO_FDS: [u32; 3] = [4, 5, 6];

/// The joining script. `$1` the network namespace, `$2`..`$4` the stdio sources, then the
/// `cgroup.procs` files up to `--`, then the command.
const JOIN_SCRIPT: &str = r#"ns=$1 in=$2 out=$3 err=$4
shift 4
while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
  echo $$ > "$1" || { echo "ferry: cannot join cgroup $1" >&2; exit 125; }
  shift
done
shift
exec "$@" 3<"$ns" 4<"$in" 5>"$out" 6>"$err""#;

/// Inside the placeholder's pid namespace and a private mount namespace: a `/proc` of that pid
/// namespace, then CRIU.
const PROC_SCRIPT: &str = r#"mount -t proc proc /proc && exec "$@""#;

/// The external mounts a runc dump recorded (`mnt: Found <key> mapping for <mountpoint>
/// mountpoint` in `dump.log`), in order, each once.
pub fn ext_mount_keys(dump_log: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for line in dump_log.lines() {
        let Some((_, rest)) = line.split_once("mnt: Found ") else {
            continue;
        };
        let Some((key, _)) = rest.split_once(" mapping for ") else {
            continue;
        };
        if !key.is_empty() && !keys.iter().any(|k| k == key) {
            keys.push(key.to_string());
        }
    }
    keys
}

/// The dumped stdio entries of `descriptors.json` that are pipes (`pipe:[<ino>]`), by fd.
pub fn stdio_pipes(descriptors_json: &str) -> Result<[Option<String>; 3]> {
    let list: Vec<String> = serde_json::from_str(descriptors_json)
        .map_err(|e| RuntimeError::Invalid(format!("descriptors.json: {e}")))?;
    let mut out: [Option<String>; 3] = Default::default();
    for (i, d) in list.iter().take(3).enumerate() {
        if d.starts_with("pipe:[") && d.ends_with(']') {
            out[i] = Some(d.clone());
        }
    }
    Ok(out)
}

/// Everything the command needs.
#[derive(Clone, Debug)]
pub struct Recipe<'a> {
    /// `sh`, `nsenter`, `unshare`.
    pub sh: &'a Path,
    pub nsenter: &'a Path,
    pub unshare: &'a Path,
    /// The `criu` binary and its `--libdir`.
    pub criu: &'a Path,
    pub libdir: Option<&'a Path>,
    /// The restore directory (absolute): images, log, stats, pidfile.
    pub dir: &'a Path,
    /// CRIU's log and pidfile names in `dir`.
    pub log: &'a str,
    pub pidfile: &'a Path,
    /// The placeholder.
    pub host_pid: i32,
    pub rootfs: &'a Path,
    pub netns: &'a Path,
    /// `cgroup.procs` files to join.
    pub cgroup_procs: &'a [PathBuf],
    /// The dumped stdio pipes (from [`stdio_pipes`]).
    pub pipes: &'a [Option<String>; 3],
    /// `--ext-mount-map key:value` pairs.
    pub ext_mounts: &'a [(String, PathBuf)],
}

impl Recipe<'_> {
    /// The argv (program first).
    pub fn argv(&self) -> Result<Vec<OsString>> {
        for (what, p) in [
            ("restore directory", self.dir),
            ("pidfile", self.pidfile),
            ("rootfs", self.rootfs),
            ("network namespace", self.netns),
        ] {
            if !p.is_absolute() {
                return Err(RuntimeError::Invalid(format!(
                    "placeholder restore: the {what} {} must be an absolute path (nsenter changes the working directory)",
                    p.display()
                )));
            }
        }
        let mut a: Vec<OsString> = vec![
            self.sh.into(),
            "-c".into(),
            JOIN_SCRIPT.into(),
            "ferry-join".into(),
            self.netns.into(),
        ];
        for (i, pipe) in self.pipes.iter().enumerate() {
            a.push(match pipe {
                Some(_) => format!("/proc/{}/fd/{i}", self.host_pid).into(),
                None => "/dev/null".into(),
            });
        }
        a.extend(self.cgroup_procs.iter().map(OsString::from));
        a.push("--".into());
        a.extend([
            self.nsenter.into(),
            "-t".into(),
            self.host_pid.to_string().into(),
            "-p".into(),
            "--".into(),
            self.unshare.into(),
            "-m".into(),
            "--propagation".into(),
            "private".into(),
            self.sh.into(),
            "-c".into(),
            PROC_SCRIPT.into(),
            "ferry-proc".into(),
        ]);
        a.extend(self.criu_args());
        Ok(a)
    }

    /// `criu restore …` (program first).
    pub fn criu_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            self.criu.into(),
            "restore".into(),
            "-D".into(),
            self.dir.into(),
            "-W".into(),
            self.dir.into(),
            "-o".into(),
            self.log.into(),
            "-v4".into(),
        ];
        if let Some(l) = self.libdir {
            a.extend(["--libdir".into(), l.into()]);
        }
        a.extend([
            "--root".into(),
            self.rootfs.into(),
            "--restore-detached".into(),
            "--manage-cgroups=ignore".into(),
            "--pidfile".into(),
            self.pidfile.into(),
            "--inherit-fd".into(),
            format!("fd[{NET_FD}]:{NET_KEY}").into(),
        ]);
        for (i, pipe) in self.pipes.iter().enumerate() {
            if let Some(p) = pipe {
                a.push("--inherit-fd".into());
                a.push(format!("fd[{}]:{p}", STDIO_FDS[i]).into());
            }
        }
        for (key, value) in self.ext_mounts {
            let mut m = OsString::from(format!("{key}:"));
            m.push(value);
            a.push("--ext-mount-map".into());
            a.push(m);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ext_mounts_and_stdio_pipes_are_read_from_runc_s_files() {
        let log = "(00.1) mnt: Found /dev/null mapping for ./proc/keys mountpoint\n\
                   (00.1) mnt: Found /dev/null mapping for ./proc/kcore mountpoint\n\
                   (00.1) mnt: Found /data mapping for ./data mountpoint\n\
                   (00.2) Found regular file mapping, OK\n";
        assert_eq!(ext_mount_keys(log), ["/dev/null", "/data"]);
        let p = stdio_pipes(r#"["/dev/null","pipe:[123]","pipe:[124]"]"#).unwrap();
        assert_eq!(
            p,
            [None, Some("pipe:[123]".into()), Some("pipe:[124]".into())]
        );
        assert!(stdio_pipes("{").is_err());
    }

    #[test]
    fn the_command_is_an_argv_with_paths_as_arguments() {
        let procs = [PathBuf::from("/sys/fs/cgroup/memory/c 1/cgroup.procs")];
        let pipes = [None, Some("pipe:[9]".to_string()), None];
        let mounts = [("/data".to_string(), PathBuf::from("/host/data"))];
        let r = Recipe {
            sh: Path::new("/bin/sh"),
            nsenter: Path::new("/usr/bin/nsenter"),
            unshare: Path::new("/usr/bin/unshare"),
            criu: Path::new("/usr/local/sbin/criu"),
            libdir: Some(Path::new("/opt/ferry/lib")),
            dir: Path::new("/work/c"),
            log: "restore.log",
            pidfile: Path::new("/work/c/restore.pid"),
            host_pid: 42,
            rootfs: Path::new("/rootfs; rm -rf /"),
            netns: Path::new("/run/netns/n"),
            cgroup_procs: &procs,
            pipes: &pipes,
            ext_mounts: &mounts,
        };
        let a: Vec<String> = r
            .argv()
            .unwrap()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let dd = a.iter().position(|s| s == "--").unwrap();
        assert_eq!(
            a[3..dd],
            [
                "ferry-join",
                "/run/netns/n",
                "/dev/null",
                "/proc/42/fd/1",
                "/dev/null",
                "/sys/fs/cgroup/memory/c 1/cgroup.procs"
            ]
        );
        let criu = a.iter().position(|s| s == "/usr/local/sbin/criu").unwrap();
        assert_eq!(
            a[dd + 1..criu],
            [
                "/usr/bin/nsenter",
                "-t",
                "42",
                "-p",
                "--",
                "/usr/bin/unshare",
                "-m",
                "--propagation",
                "private",
                "/bin/sh",
                "-c",
                PROC_SCRIPT,
                "ferry-proc"
            ]
        );
        let tail = a[criu..].join(" ");
        assert!(
            tail.contains("--root /rootfs; rm -rf / --restore-detached --manage-cgroups=ignore")
        );
        assert!(tail.contains("--libdir /opt/ferry/lib"));
        assert!(tail.contains("--inherit-fd fd[3]:extRootNetNS --inherit-fd fd[5]:pipe:[9]"));
        assert!(tail.ends_with("--ext-mount-map /data:/host/data"));
        // Relative paths are refused: nsenter changes the working directory.
        let rel = Recipe {
            dir: Path::new("work/c"),
            ..r
        };
        assert!(rel.argv().is_err());
    }
}
