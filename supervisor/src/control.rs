//! The files the agent and the supervisor exchange in the control directory (an emptyDir of
//! the restored pod, reached by the agent through `/proc/<placeholder>/root/<mount>`).
//!
//! The agent writes exactly one of:
//! - `restored`: the restored root's pid as the supervisor's pid namespace sees it (CRIU's
//!   `--pidfile` when CRIU ran in that namespace), in decimal, **ending in a newline**;
//! - `failed`: why the restore failed (one line of text; longer or odd text is trimmed).
//!
//! The supervisor writes `state`, one line: `waiting`, `running pid=<n>`, `exited code=<n>`
//! or `failed reason=<text>`; `ferry-supervisor probe` passes only on `running`.
//!
//! Every file is written to a temporary name and renamed into place, so a reader sees all of
//! it or none; a `restored` without its newline is read as not yet written. Reads refuse
//! symlinks, non-regular files and anything over [`MAX_FILE`] bytes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Written by the agent after a successful restore.
pub const RESTORED: &str = "restored";
/// Written by the agent after a failed restore.
pub const FAILED: &str = "failed";
/// Written by the supervisor.
pub const STATE: &str = "state";
/// The largest control file read.
pub const MAX_FILE: usize = 4096;
/// The longest reason kept, in characters.
pub const MAX_REASON: usize = 512;

/// An unusable control directory or file.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path}: larger than {MAX_FILE} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {what}")]
    Malformed { path: PathBuf, what: String },
}

/// What the agent has said so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Nothing yet.
    Pending,
    /// The restore succeeded; the restored root's pid in the supervisor's pid namespace.
    Restored(i32),
    /// The restore failed, with the agent's reason.
    Failed(String),
}

/// The supervisor's state, for the probe and the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Waiting,
    Running { pid: i32 },
    Exited { code: u8 },
    Failed { reason: String },
}

impl State {
    /// The one-line form written to `state` (without the newline).
    pub fn to_line(&self) -> String {
        match self {
            Self::Waiting => "waiting".into(),
            Self::Running { pid } => format!("running pid={pid}"),
            Self::Exited { code } => format!("exited code={code}"),
            Self::Failed { reason } => format!("failed reason={}", one_line(reason)),
        }
    }

    /// Parses a `state` file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let line = text.strip_suffix('\n').unwrap_or(text);
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let value = |key: &str| {
            rest.strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .ok_or_else(|| format!("{word}: expected {key}=…, got {rest:?}"))
        };
        match word {
            "waiting" if rest.is_empty() => Ok(Self::Waiting),
            "running" => match value("pid")?.parse() {
                Ok(pid) if pid > 0 => Ok(Self::Running { pid }),
                _ => Err(format!("bad pid in {line:?}")),
            },
            "exited" => value("code")?
                .parse()
                .map(|code| Self::Exited { code })
                .map_err(|_| format!("bad code in {line:?}")),
            "failed" => value("reason").map(|r| Self::Failed {
                reason: r.to_string(),
            }),
            _ => Err(format!("unknown state {line:?}")),
        }
    }
}

/// Parses the text of `restored`: `None` while incomplete (no final newline).
pub fn parse_restored(text: &str) -> Result<Option<i32>, String> {
    let Some(body) = text.strip_suffix('\n') else {
        return Ok(None);
    };
    let body = body.trim();
    match body.parse::<i32>() {
        // Pid 1 is the supervisor itself when it is the namespace's init.
        Ok(pid) if pid > 1 => Ok(Some(pid)),
        _ => Err(format!("expected a pid above 1, got {body:?}")),
    }
}

/// The reason in `failed`, made one line of at most [`MAX_REASON`] characters.
pub fn parse_failed(text: &str) -> String {
    let reason = one_line(text.trim());
    if reason.is_empty() {
        "no reason given".into()
    } else {
        reason
    }
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON)
        .collect()
}

/// Reads a control file: `None` if it does not exist.
fn read_small(path: &Path) -> Result<Option<String>, ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    if !file.metadata().map_err(io_err)?.is_file() {
        return Err(ControlError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() > MAX_FILE {
        return Err(ControlError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// What the agent has written to `dir`; `failed` wins over `restored`.
pub fn read_control(dir: &Path) -> Result<Control, ControlError> {
    if let Some(text) = read_small(&dir.join(FAILED))? {
        return Ok(Control::Failed(parse_failed(&text)));
    }
    let path = dir.join(RESTORED);
    match read_small(&path)? {
        None => Ok(Control::Pending),
        Some(text) => match parse_restored(&text) {
            Ok(Some(pid)) => Ok(Control::Restored(pid)),
            Ok(None) => Ok(Control::Pending),
            Err(what) => Err(ControlError::Malformed { path, what }),
        },
    }
}

/// The supervisor's state in `dir`; `None` before the supervisor wrote one.
pub fn read_state(dir: &Path) -> Result<Option<State>, ControlError> {
    let path = dir.join(STATE);
    match read_small(&path)? {
        None => Ok(None),
        Some(text) => State::parse(&text)
            .map(Some)
            .map_err(|what| ControlError::Malformed { path, what }),
    }
}

/// Writes `dir/name` atomically: a temporary file in `dir`, fsynced, renamed into place.
fn write_atomic(dir: &Path, name: &str, text: &str) -> Result<(), ControlError> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let path = dir.join(name);
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ControlError::Io { path: p, source }
    };
    let mut file: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// The supervisor records its state.
pub fn write_state(dir: &Path, state: &State) -> Result<(), ControlError> {
    write_atomic(dir, STATE, &format!("{}\n", state.to_line()))
}

/// The agent reports a successful restore: `pid` as the supervisor's pid namespace sees it.
pub fn write_restored(dir: &Path, pid: i32) -> Result<(), ControlError> {
    write_atomic(dir, RESTORED, &format!("{pid}\n"))
}

/// The agent reports a failed restore.
pub fn write_failed(dir: &Path, reason: &str) -> Result<(), ControlError> {
    write_atomic(dir, FAILED, &format!("{}\n", one_line(reason)))
}

#[cfg(test)]
mod tests;
