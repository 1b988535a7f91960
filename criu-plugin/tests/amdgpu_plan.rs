//! The restore's copy plan, built from image BO entries and memfd stand-ins for the
//! dma-buf fds KFD RESTORE returns: per-GPU pages images read from offset 0, only VRAM/GTT
//! BOs, each buffer carrying its own BO's fd.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::OwnedFd;

use ferry_criu_plugin::backends::amdgpu::ioctl::alloc_flags::{DOORBELL, GTT, USERPTR, VRAM};
use ferry_criu_plugin::backends::amdgpu::kfd::{
    GpuTarget, copy_plan_for, split_device_key, vma_moves,
};
use ferry_criu_plugin::backends::amdgpu::proto::KfdBoEntry;
use ferry_criu_plugin::contract::BackendId;

const WRITABLE: u32 = 1 << 31;

fn memfd(tag: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("bo", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    // The memfd's length identifies which BO's fd ended up where.
    rustix::fs::ftruncate(&fd, tag).unwrap();
    fd
}

fn len_of(fd: &OwnedFd) -> u64 {
    rustix::fs::fstat(fd).unwrap().st_size as u64
}

fn bo(gpu_id: u32, size: u64, flags: u32) -> KfdBoEntry {
    KfdBoEntry {
        addr: 0x7f00_0000_0000 + size,
        size,
        offset: size << 8,
        alloc_flags: flags,
        gpu_id,
        handle: 0,
    }
}

fn targets() -> Vec<GpuTarget> {
    vec![
        GpuTarget {
            user_gpu_id: 0xaaaa,
            actual_gpu_id: 0x1111,
            render_minor: 129,
        },
        GpuTarget {
            user_gpu_id: 0xbbbb,
            actual_gpu_id: 0x2222,
            render_minor: 128,
        },
    ]
}

#[test]
fn two_gpus_with_three_bos_each_read_their_own_pages_image_from_offset_zero() {
    // Interleaved BO order, as KFD may return it; GPU B's BOs are 1 page, 2 pages, 3 pages.
    let bos = vec![
        bo(0xaaaa, 0x1000, VRAM | WRITABLE),
        bo(0xbbbb, 0x1000, VRAM),
        bo(0xaaaa, 0x20_0000, GTT),
        bo(0xbbbb, 0x2000, GTT),
        bo(0xaaaa, 0x3000, VRAM),
        bo(0xbbbb, 0x3000, VRAM),
    ];
    let fds = (0..bos.len() as u64)
        .map(|i| Some(memfd(100 + i)))
        .collect();
    let plan = copy_plan_for(7, 4242, &bos, &targets(), fds).unwrap();

    assert_eq!(plan.backend, BackendId::Amdgpu);
    assert_eq!((plan.ext_id, plan.pid), (7, 4242));
    assert_eq!(plan.devices.len(), 2);
    assert_eq!(plan.devices[0].pages_image, "amdgpu-pages-7-aaaa.img");
    assert_eq!(plan.devices[1].pages_image, "amdgpu-pages-7-bbbb.img");
    assert_eq!(split_device_key(plan.devices[0].key), (129, 0x1111));
    assert_eq!(split_device_key(plan.devices[1].key), (128, 0x2222));

    let per_dev = |d: u32| -> Vec<(u64, u64, u64)> {
        plan.buffers
            .iter()
            .filter(|b| b.device == d)
            .map(|b| (b.read_offset, b.size, len_of(&b.fd)))
            .collect()
    };
    assert_eq!(
        per_dev(0),
        vec![
            (0, 0x1000, 100),
            (0x1000, 0x20_0000, 102),
            (0x20_1000, 0x3000, 104)
        ]
    );
    // The second GPU's first BO starts at 0 in its own image (upstream's summed offsets
    // would have put it at 0x20_4000).
    assert_eq!(
        per_dev(1),
        vec![
            (0, 0x1000, 101),
            (0x1000, 0x2000, 103),
            (0x3000, 0x3000, 105)
        ]
    );
    assert!(plan.buffers.iter().all(|b| b.write_offset == 0));
    assert_eq!(plan.device_bytes(0), 0x20_4000);
    assert_eq!(plan.device_bytes(1), 0x6000);
}

#[test]
fn only_vram_and_gtt_bos_are_copied_and_a_gpu_without_contents_gets_no_device() {
    let bos = vec![
        bo(0xaaaa, 0x1000, DOORBELL),
        bo(0xaaaa, 0x4000, USERPTR),
        bo(0xbbbb, 0x2000, GTT),
        bo(0xbbbb, 0x1000, DOORBELL),
    ];
    // KFD gives no dma-buf for doorbells; the USERPTR one's fd must be closed, not planned.
    let fds = vec![None, Some(memfd(1)), Some(memfd(2)), None];
    let plan = copy_plan_for(3, 1, &bos, &targets(), fds).unwrap();
    assert_eq!(plan.devices.len(), 1);
    assert_eq!(plan.devices[0].pages_image, "amdgpu-pages-3-bbbb.img");
    assert_eq!(plan.buffers.len(), 1);
    assert_eq!(
        (plan.buffers[0].read_offset, plan.buffers[0].size),
        (0, 0x2000)
    );
    assert_eq!(len_of(&plan.buffers[0].fd), 2);
}

#[test]
fn a_contents_bo_without_a_dma_buf_fails_the_plan_naming_the_bo() {
    let bos = vec![bo(0xaaaa, 0x1000, VRAM)];
    let e = copy_plan_for(1, 1, &bos, &targets(), vec![None])
        .unwrap_err()
        .to_string();
    assert!(e.contains("BO 0") && e.contains("0xaaaa"), "{e}");
}

#[test]
fn a_bo_on_a_gpu_missing_from_the_device_list_is_rejected() {
    let bos = vec![bo(0xcccc, 0x1000, VRAM)];
    assert!(copy_plan_for(1, 1, &bos, &targets(), vec![Some(memfd(1))]).is_err());
}

#[test]
fn mappings_of_contents_doorbell_and_mmio_bos_move_to_the_restored_offsets() {
    use ferry_criu_plugin::backends::amdgpu::ioctl::KfdCriuBoBucket;
    let mut buckets: Vec<KfdCriuBoBucket> = [(0xaaaa, VRAM), (0xbbbb, DOORBELL), (0xaaaa, USERPTR)]
        .iter()
        .enumerate()
        .map(|(i, (g, f))| KfdCriuBoBucket {
            addr: 0x1000 * (i as u64 + 1),
            offset: 0x10 * (i as u64 + 1),
            gpu_id: *g,
            alloc_flags: *f,
            ..Default::default()
        })
        .collect();
    for (i, b) in buckets.iter_mut().enumerate() {
        b.restored_offset = 0x9000 + i as u64;
    }
    let moves = vma_moves(&buckets, &targets()).unwrap();
    assert_eq!(moves.len(), 2);
    assert_eq!(
        (
            moves[0].addr,
            moves[0].old_pgoff,
            moves[0].new_pgoff,
            moves[0].actual_gpu_id
        ),
        (0x1000, 0x10, 0x9000, 0x1111)
    );
    assert_eq!(moves[1].actual_gpu_id, 0x2222);
}

/// A pwrite copy engine: the memfd stand-in for SDMA into a dma-buf.
struct MemfdEngine;

impl ferry_criu_plugin::contract::CopyEngine for MemfdEngine {
    fn write(
        &mut self,
        dst: std::os::fd::BorrowedFd<'_>,
        offset: u64,
        bytes: &[u8],
    ) -> ferry_criu_plugin::Result<()> {
        let mut done = 0;
        while done < bytes.len() {
            done += rustix::io::pwrite(dst, &bytes[done..], offset + done as u64)?;
        }
        Ok(())
    }
}

#[test]
fn a_two_gpu_plan_crosses_the_restore_socket_and_fills_each_memfd_from_its_gpus_pages_image() {
    use ferry_criu_plugin::contract::images;
    use ferry_criu_plugin::engine::{copy, fdpass, protocol};
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    let bos = vec![
        bo(0xaaaa, 0x1000, VRAM),
        bo(0xbbbb, 0x1000, VRAM),
        bo(0xaaaa, 0x3000, GTT),
        bo(0xbbbb, 0x2000, GTT),
    ];
    let fds = (0..bos.len())
        .map(|_| Some(rustix::fs::memfd_create("bo", rustix::fs::MemfdFlags::CLOEXEC).unwrap()))
        .collect();
    let plan = copy_plan_for(7, 4242, &bos, &targets(), fds).unwrap();

    // Each GPU's pages image: its BOs' bytes back to back, byte value = GPU tag + BO index.
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for (d, dev) in plan.devices.iter().enumerate() {
        let mut payload = Vec::new();
        for (i, b) in plan
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.device as usize == d)
        {
            assert_eq!(b.read_offset, payload.len() as u64, "per-GPU offsets");
            let byte = (0x10 * (d + 1) + i) as u8;
            payload.extend(std::iter::repeat_n(byte, b.size as usize));
            expected.push((i, byte, b.size));
        }
        let mut f = std::fs::File::create(dir.path().join(&dev.pages_image)).unwrap();
        images::write_sized(&mut f, &dev.pages_image, &payload).unwrap();
    }

    // Send it the way a restored task does: header, payload, fds in a batch; decode it on
    // the other end of a real socketpair.
    let (a, b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let (header, payload) = protocol::encode_plan(&plan).unwrap();
    fdpass::send(a.as_fd(), &header.encode(), &[]).unwrap();
    fdpass::send(a.as_fd(), &payload, &[]).unwrap();
    let fds: Vec<_> = plan.buffers.iter().map(|b| b.fd.as_fd()).collect();
    fdpass::send(a.as_fd(), b"FRYF\x04\x00\x00\x00", &fds).unwrap();
    let mut h = [0u8; protocol::HEADER_LEN];
    fdpass::recv_exact(b.as_fd(), &mut h, "header").unwrap();
    let h = protocol::Header::decode(&h).unwrap();
    let mut p = vec![0u8; h.payload_len as usize];
    fdpass::recv_exact(b.as_fd(), &mut p, "payload").unwrap();
    let mut batch = [0u8; 8];
    let got = fdpass::recv_exact(b.as_fd(), &mut batch, "fds").unwrap();
    let received = protocol::decode_plan(&h, &p, got).unwrap();

    for (d, dev) in received.devices.iter().enumerate() {
        let pages = std::fs::File::open(dir.path().join(&dev.pages_image)).unwrap();
        let bufs: Vec<_> = received
            .buffers
            .iter()
            .filter(|b| b.device as usize == d)
            .collect();
        copy::copy_device(&pages, &dev.pages_image, &bufs, &mut MemfdEngine, 0x800).unwrap();
    }
    // The receiver's fds are dups of the sender's memfds: read the results through the plan.
    for (i, byte, size) in expected {
        let f = std::fs::File::from(plan.buffers[i].fd.try_clone().unwrap());
        let mut v = vec![0u8; size as usize];
        f.read_exact_at(&mut v, 0).unwrap();
        assert!(
            v.iter().all(|x| *x == byte),
            "buffer {i} should hold {byte:#x}"
        );
    }
}
