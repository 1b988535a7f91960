//! kubectl against the cluster, as the admin or another user: commands, output, JSON, CRDs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{CHECKPOINT_TIMEOUT, Cluster, KUBECTL_REQUEST_TIMEOUT};
use crate::error::{Error, IoContext, Result};
use crate::pki::User;
use crate::workspace_root;

impl Cluster {
    /// Asks `node`'s kubelet, through the API server's node proxy, to checkpoint `container`
    /// of pod `namespace/pod` (`POST /api/v1/nodes/<node>/proxy/checkpoint/<ns>/<pod>/<container>`,
    /// KEP-2008) and returns the archive's path on the node, as the kubelet reports it.
    pub fn checkpoint(
        &self,
        node: &str,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<PathBuf> {
        // Not through `kubectl_command`: kubectl's --request-timeout=60s becomes the query
        // parameter `timeout=60s`, which the kubelet's checkpoint handler parses as whole
        // seconds and answers 404 ("cannot parse value of timeout parameter"). The kubelet
        // passes this timeout on to the runtime's checkpoint call.
        let uri = format!(
            "/api/v1/nodes/{node}/proxy/checkpoint/{namespace}/{pod}/{container}?timeout={}",
            CHECKPOINT_TIMEOUT.as_secs()
        );
        let args = ["create", "--raw", uri.as_str(), "-f", "-"];
        let mut command = Command::new(&self.binaries.kubectl);
        command
            .arg(format!(
                "--kubeconfig={}",
                self.kubeconfig(User::Admin).display()
            ))
            .args(args)
            .env_remove("KUBECONFIG");
        let out = checked(&args, run(command, Some(""), &self.binaries.kubectl)?)?;
        let reply: serde_json::Value =
            serde_json::from_str(&out).map_err(|source| Error::KubectlOutput {
                args: args.join(" "),
                source,
            })?;
        reply["items"][0]
            .as_str()
            .map(PathBuf::from)
            .ok_or_else(|| Error::Node {
                node: node.to_string(),
                what: format!("the checkpoint API answered without an archive path: {out}"),
            })
    }

    /// A kubectl command as the admin, against this cluster, not yet run.
    pub fn kubectl_command(&self) -> Command {
        self.kubectl_command_as(User::Admin)
    }

    /// A kubectl command as `user`, against this cluster, not yet run.
    pub fn kubectl_command_as(&self, user: User) -> Command {
        let mut command = Command::new(&self.binaries.kubectl);
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig(user).display()))
            .arg(KUBECTL_REQUEST_TIMEOUT)
            .env_remove("KUBECONFIG");
        command
    }

    /// Runs kubectl as the admin with `stdin` (if any) and returns its output, whatever its
    /// exit status: for tests that expect a command to fail.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut command = self.kubectl_command();
        command.args(args);
        run(command, stdin, &self.binaries.kubectl)
    }

    /// Runs kubectl as the admin and returns its stdout; an error if it fails.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl as the admin with `stdin` and returns its stdout; an error if it fails.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let output = self.kubectl_output(args, stdin)?;
        checked(args, output)
    }

    /// Runs kubectl as the admin and parses its stdout as JSON (pass `-o json`).
    pub fn kubectl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.kubectl(args)?;
        serde_json::from_str(&out).map_err(|source| Error::KubectlOutput {
            args: args.join(" "),
            source,
        })
    }

    /// Applies `manifests/crds/` and waits until the CRDs are established.
    pub fn apply_crds(&self) -> Result<()> {
        let crds = workspace_root().join("manifests/crds");
        let crds = crds.display().to_string();
        self.kubectl(&["apply", "--server-side", "-f", &crds])?;
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &crds,
        ])?;
        Ok(())
    }
}

fn run(mut command: Command, stdin: Option<&str>, program: &Path) -> Result<Output> {
    use std::io::Write;
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        name: "kubectl".to_string(),
        program: program.to_path_buf(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Written from a thread: kubectl may fill its stdout pipe before reading all of stdin.
        let input = input.to_string();
        let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
        let output = child.wait_with_output();
        let written = writer.join();
        let output = output.io_context("running kubectl", program)?;
        if let Ok(Err(e)) = written
            && output.status.success()
        {
            return Err(e).io_context("writing kubectl's stdin", program);
        }
        return Ok(output);
    }
    child
        .wait_with_output()
        .io_context("running kubectl", program)
}

fn checked(args: &[&str], output: Output) -> Result<String> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Kubectl {
            args: args.join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}
