//! containerd's client `ctr`: importing checkpoint images, listing and removing images.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runtime::control::ToolControl;
use crate::runtime::error::{Result, io_err};
use crate::runtime::exec::{self, tool_result};

/// containerd's client `ctr` on the node's containerd socket, in the `k8s.io` namespace (the
/// kubelet's: an image elsewhere is invisible to it).
#[derive(Clone, Debug)]
pub struct Ctr {
    /// The `ctr` binary.
    pub binary: PathBuf,
    /// containerd's socket.
    pub socket: PathBuf,
    /// The snapshotter the CRI plugin uses (its images must be unpacked into that one).
    pub snapshotter: String,
}

impl Ctr {
    /// `ctr images import` of the OCI archive `archive`; `ctr`'s output goes to `log`. The
    /// import is a task's tool: it ends with `control`'s deadline or cancel.
    pub fn import(
        &self,
        archive: &Path,
        log: &Path,
        limit: Duration,
        control: &ToolControl,
    ) -> Result<()> {
        let out =
            std::fs::File::create(log).map_err(io_err(format!("create {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io_err(format!("open {}", log.display())))?;
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(format!("--snapshotter={}", self.snapshotter))
            .arg(archive)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        let done = exec::run(&mut cmd, "ctr images import", limit, control)?;
        tool_result("ctr", "images import", done.status, log)
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs a read-only `ctr` command and returns its output (small: listings).
    pub fn query(&self, args: &[&str], limit: Duration) -> Result<String> {
        let out = tempfile::tempfile().map_err(io_err("temporary file for ctr's output"))?;
        let err = tempfile::NamedTempFile::new().map_err(io_err("temporary file for ctr's log"))?;
        let mut cmd = self.command(args);
        cmd.stdout(out.try_clone().map_err(io_err("ctr output file"))?)
            .stderr(err.reopen().map_err(io_err("ctr log file"))?);
        let what = format!("ctr {}", args.join(" "));
        let done = exec::run(&mut cmd, &what, limit, &ToolControl::default())?;
        tool_result("ctr", "query", done.status, err.path())?;
        let mut text = String::new();
        use std::io::{Read, Seek};
        let mut out = out;
        out.rewind()
            .and_then(|_| out.read_to_string(&mut text))
            .map_err(io_err("read ctr's output"))?;
        Ok(text)
    }

    /// `ctr images rm` of `references` (containerd's GC then frees what nothing references).
    pub fn remove_images(&self, references: &[String], limit: Duration) -> Result<()> {
        let err = tempfile::NamedTempFile::new().map_err(io_err("temporary file for ctr's log"))?;
        let mut args = vec!["images", "rm"];
        args.extend(references.iter().map(String::as_str));
        let mut cmd = self.command(&args);
        cmd.stdout(std::process::Stdio::null())
            .stderr(err.reopen().map_err(io_err("ctr log file"))?);
        let done = exec::run(&mut cmd, "ctr images rm", limit, &ToolControl::default())?;
        tool_result("ctr", "images rm", done.status, err.path())
    }
}
