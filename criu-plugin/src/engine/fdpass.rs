//! Bytes plus file descriptors over a Unix socket (SCM_RIGHTS), through rustix's safe API.
//! Received fds arrive as `OwnedFd`s, so none leaks on an error path.

use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg, sockopt,
};

use crate::error::{PluginError, Result};

/// Most fds in one message: CRIU's `CR_SCM_MAX_FD`, which the kernel's `SCM_MAX_FD` (253) allows.
pub const MAX_FDS_PER_MSG: usize = 252;

/// Sends `bytes` with `fds` attached to the first byte; retries EINTR, finishes partial sends.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
    if fds.len() > MAX_FDS_PER_MSG {
        return Err(PluginError::invalid(format!(
            "{} fds in one message, at most {MAX_FDS_PER_MSG}",
            fds.len()
        )));
    }
    let mut sent = 0;
    let mut first = true;
    while sent < bytes.len() || first {
        let mut space =
            vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if first && !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(PluginError::invalid(
                "ancillary buffer too small for the fds",
            ));
        }
        let iov = [std::io::IoSlice::new(&bytes[sent..])];
        match sendmsg(sock, &iov, &mut anc, SendFlags::NOSIGNAL) {
            Ok(n) => {
                sent += n;
                first = false;
                if n == 0 && sent < bytes.len() {
                    return Err(PluginError::io(
                        "send",
                        std::io::ErrorKind::WriteZero.into(),
                    ));
                }
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(PluginError::io("send on the restore socket", e.into())),
        }
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes and any fds that came with them. Returns 0 bytes at EOF.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>)> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
    loop {
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [std::io::IoSliceMut::new(buf)];
        match recvmsg(sock, &mut iov, &mut anc, RecvFlags::CMSG_CLOEXEC) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for m in anc.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = m {
                        fds.extend(rights);
                    }
                }
                if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
                    return Err(PluginError::invalid(
                        "control message truncated: more fds were sent than one message may carry",
                    ));
                }
                return Ok((msg.bytes, fds));
            }
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => {
                return Err(PluginError::Timeout(
                    "timed out waiting on the restore socket".into(),
                ));
            }
            Err(e) => return Err(PluginError::io("receive on the restore socket", e.into())),
        }
    }
}

/// Receives exactly `buf.len()` bytes (collecting any fds on the way); EOF is an error that
/// names how much arrived, which is how a restored task dying mid-send shows up.
pub fn recv_exact(sock: BorrowedFd<'_>, buf: &mut [u8], what: &str) -> Result<Vec<OwnedFd>> {
    let mut got = 0;
    let mut fds = Vec::new();
    while got < buf.len() {
        let (n, more) = recv(sock, &mut buf[got..])?;
        fds.extend(more);
        if n == 0 {
            return Err(PluginError::invalid(format!(
                "the restored task closed the channel after {got} of {} bytes of the {what}",
                buf.len()
            )));
        }
        got += n;
    }
    Ok(fds)
}

/// Bounds every blocking read and write on `fd` by `t`, so a peer that dies or hangs
/// mid-command ends in an error, not a hung CRIU.
pub fn set_timeouts(fd: BorrowedFd<'_>, t: Duration) -> Result<()> {
    sockopt::set_socket_timeout(fd, sockopt::Timeout::Recv, Some(t))
        .and_then(|()| sockopt::set_socket_timeout(fd, sockopt::Timeout::Send, Some(t)))
        .map_err(|e| PluginError::io("set restore socket timeouts", e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    use std::os::fd::AsFd;

    #[test]
    fn fds_and_bytes_cross_a_real_socketpair() {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let f = tempfile::tempfile().unwrap();
        use std::io::Write;
        (&f).write_all(b"payload").unwrap();
        send(a.as_fd(), b"hi", &[f.as_fd()]).unwrap();
        let mut buf = [0u8; 2];
        let fds = recv_exact(b.as_fd(), &mut buf, "test").unwrap();
        assert_eq!(&buf, b"hi");
        assert_eq!(fds.len(), 1);
        let got = std::fs::File::from(fds.into_iter().next().unwrap());
        let mut s = String::new();
        use std::io::{Read, Seek};
        (&got).seek(std::io::SeekFrom::Start(0)).unwrap();
        (&got).read_to_string(&mut s).unwrap();
        assert_eq!(s, "payload");
    }

    #[test]
    fn eof_mid_message_names_the_byte_counts() {
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        send(a.as_fd(), b"abc", &[]).unwrap();
        drop(a);
        let mut buf = [0u8; 8];
        let e = recv_exact(b.as_fd(), &mut buf, "command header").unwrap_err();
        assert!(e.to_string().contains("after 3 of 8 bytes"), "{e}");
    }

    #[test]
    fn more_than_252_fds_are_refused() {
        let (a, _b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let fds: Vec<BorrowedFd<'_>> = (0..253).map(|_| a.as_fd()).collect();
        assert!(send(a.as_fd(), b"x", &fds).is_err());
    }
}
