//! Whether this machine can run real nodes, and the address they use.

use std::fs::{self};
use std::net::{IpAddr, UdpSocket};

use crate::error::{Error, Result};

use super::cleanup::cgroup_hierarchies;

/// Why real nodes cannot run on this machine, or `None` when they can (as far as checks
/// before starting anything tell): not root, no cgroup hierarchy with the controllers the
/// kubelet needs, no non-loopback address for the nodes, no overlay filesystem.
pub fn unsupported_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some(
            "real nodes need root (containerd, runc and the kubelet mount and create cgroups)"
                .to_string(),
        );
    }
    let hierarchies = cgroup_hierarchies();
    let has = |controller: &str| {
        hierarchies
            .iter()
            .any(|h| h.controllers.iter().any(|c| c == controller))
    };
    let missing: Vec<&str> = ["cpu", "cpuset", "memory", "pids"]
        .into_iter()
        .filter(|c| !has(c))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "no cgroup hierarchy has the controllers {missing:?} (the kubelet needs them)"
        ));
    }
    if let Err(e) = host_ip() {
        return Some(e.to_string());
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("overlay"))
    {
        return Some("the kernel has no overlay filesystem (containerd's snapshotter)".to_string());
    }
    None
}

/// The host's address on its default route: the nodes' InternalIP (the kubelet refuses a
/// loopback node IP). Found by connecting a UDP socket, which sends nothing.
pub fn host_ip() -> Result<IpAddr> {
    let probe = || -> std::io::Result<IpAddr> {
        let socket = UdpSocket::bind(("0.0.0.0", 0))?;
        // TEST-NET-3: never a local network, so the route to it is the default route.
        socket.connect(("203.0.113.1", 9))?;
        Ok(socket.local_addr()?.ip())
    };
    match probe() {
        Ok(ip) if !ip.is_loopback() && !ip.is_unspecified() => Ok(ip),
        Ok(ip) => Err(Error::Node {
            node: "-".to_string(),
            what: format!(
                "the host's default-route address is {ip}; a kubelet needs a non-loopback node IP"
            ),
        }),
        Err(e) => Err(Error::Node {
            node: "-".to_string(),
            what: format!("could not find the host's default-route address: {e}"),
        }),
    }
}
