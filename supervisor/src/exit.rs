//! Exit codes: the restored root's status passed on with the shell's convention (what
//! containerd reports as the container's exit code), and the supervisor's own failures.

/// How a child ended, from `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `exit(code)`.
    Code(i32),
    /// Killed by signal number `n`.
    Signal(i32),
}

impl Ended {
    /// From a wait status; `None` for a stop or continue report (never asked for).
    pub fn from_wait(status: rustix::process::WaitStatus) -> Option<Self> {
        if let Some(code) = status.exit_status() {
            Some(Self::Code(code))
        } else {
            status.terminating_signal().map(Self::Signal)
        }
    }

    /// The container's exit code: `exit(N)` → N (low 8 bits, as the kernel keeps them),
    /// killed by signal S → 128 + S.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Code(code) => (code & 0xff) as u8,
            Self::Signal(sig) => 128u8.saturating_add((sig & 0x7f) as u8),
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exited status={code}"),
            Self::Signal(sig) => write!(f, "killed signal={sig}"),
        }
    }
}

/// The supervisor itself failed (could not block signals, write its state file, …).
pub const INTERNAL: u8 = 70;
/// The agent reported a failed restore (`<control>/failed`).
pub const RESTORE_FAILED: u8 = 71;
/// The control data was unusable: an unparsable file, or a pid that is not the supervisor's
/// child.
pub const BAD_CONTROL: u8 = 72;
/// The agent did not report within `--timeout`.
pub const TIMEOUT: u8 = 75;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let cases = [
            (Ended::Code(0), 0),
            (Ended::Code(3), 3),
            (Ended::Code(255), 255),
            (Ended::Code(256), 0),
            (Ended::Code(-1), 255),
            (Ended::Signal(libc::SIGKILL), 137),
            (Ended::Signal(libc::SIGTERM), 143),
            (Ended::Signal(libc::SIGINT), 130),
            (Ended::Signal(libc::SIGSEGV), 139),
            (Ended::Signal(64), 192),
        ];
        for (ended, want) in cases {
            assert_eq!(ended.exit_code(), want, "{ended:?}");
        }
    }

    #[test]
    fn supervisor_codes_are_distinct() {
        let codes = [INTERNAL, RESTORE_FAILED, BAD_CONTROL, TIMEOUT];
        for (i, a) in codes.iter().enumerate() {
            assert!(codes[i + 1..].iter().all(|b| a != b));
            assert!(*a < 126, "{a} would read as a shell or signal code");
        }
    }
}
