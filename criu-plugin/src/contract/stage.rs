//! The stage of a CRIU run (`enum cr_plugin_stage`), as `init` receives it.

/// Plugin stages (`enum cr_plugin_stage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Dump,
    PreDump,
    Restore,
}
