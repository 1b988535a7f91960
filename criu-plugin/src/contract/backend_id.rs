//! Which backend a copy plan belongs to. Sent over the restore socket, so the numbers are
//! part of the wire protocol and never change.

/// Which backend a copy plan belongs to (sent over the restore socket, so stable numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BackendId {
    Sim = 1,
    Amdgpu = 2,
    Nvidia = 3,
}

impl BackendId {
    pub fn from_u8(v: u8) -> Option<BackendId> {
        match v {
            1 => Some(BackendId::Sim),
            2 => Some(BackendId::Amdgpu),
            3 => Some(BackendId::Nvidia),
            _ => None,
        }
    }
}
