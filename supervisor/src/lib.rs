//! ferry's PID-1 supervisor for placeholder containers (`docs/placeholder-restore.md`).
//!
//! A restored pod's containers start `ferry-supervisor run` instead of their command. The
//! node agent restores the checkpoint with CRIU into the container's namespaces so that the
//! restored root becomes the supervisor's child, then writes a control file; the supervisor
//! adopts the root, forwards signals to it, reaps every child and exits with the root's exit
//! status. `ferry-supervisor probe` is the container's startup gate.
//!
//! Layers, bottom up: `log`, `exit`, `duration`, `sys` (the syscall boundary, the only
//! `unsafe`), `control` (the files the agent and the supervisor exchange), `supervise` (the
//! loop). The agent may use `control` to write its side of the protocol.

pub mod control;
pub mod duration;
pub mod exit;
pub mod log;
pub mod supervise;
pub mod sys;
