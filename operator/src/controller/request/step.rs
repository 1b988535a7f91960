//! What one phase step decided, for the shell in `request/mod.rs` to act on.

/// Why a request failed: the `Ready` condition's reason (one of
/// `ferry_api::names::reason`) and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The reason.
    pub reason: &'static str,
    /// The message, for people.
    pub message: String,
}

impl Failure {
    /// A failure with `reason` and `message`.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            reason,
            message: message.into(),
        }
    }
}

/// What one step decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing more to do until the world changes.
    Wait,
    /// Nothing to do now, and something is due within this long without a watch event (a
    /// restored pod's settle period ending): look again then at the latest.
    Recheck(std::time::Duration),
    /// The status moved on; look again at once.
    Advanced,
    /// The request failed.
    Fail(Failure),
}

impl From<Failure> for Step {
    fn from(f: Failure) -> Self {
        Step::Fail(f)
    }
}

/// What the agent said about a task, for a failure message.
pub fn task_message(task: &ferry_api::NodeTask) -> String {
    task.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_else(|| "the agent gave no message".into())
}
