//! The Rust mirrors of the kernel's KFD UAPI and libdrm_amdgpu's structs against the C
//! headers: a C program including `<linux/kfd_ioctl.h>` (linux-libc-dev) and
//! `<amdgpu.h>`/`<amdgpu_drm.h>` (libdrm-dev, under /usr/include/libdrm, which also
//! provides the `<drm/drm.h>` kfd_ioctl.h includes) is compiled with
//! `cc` at test time and prints sizeof/offsetof and the ioctl macros; Rust must agree.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::process::Command;

use ferry_criu_plugin::backends::amdgpu::ioctl::*;

const PROGRAM: &str = r#"
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <linux/kfd_ioctl.h>
#include <amdgpu_drm.h>
#include <amdgpu.h>

#define SZ(t) printf("sizeof %s %zu\n", #t, sizeof(struct t))
#define OFF(t, f) printf("offsetof %s.%s %zu\n", #t, #f, offsetof(struct t, f))
#define NUM(n) printf("value %s %llu\n", #n, (unsigned long long)(n))

int main(void) {
    SZ(kfd_ioctl_get_version_args);
    OFF(kfd_ioctl_get_version_args, minor_version);
    SZ(kfd_ioctl_criu_args);
    OFF(kfd_ioctl_criu_args, devices); OFF(kfd_ioctl_criu_args, bos);
    OFF(kfd_ioctl_criu_args, priv_data); OFF(kfd_ioctl_criu_args, priv_data_size);
    OFF(kfd_ioctl_criu_args, num_devices); OFF(kfd_ioctl_criu_args, num_bos);
    OFF(kfd_ioctl_criu_args, num_objects); OFF(kfd_ioctl_criu_args, pid);
    OFF(kfd_ioctl_criu_args, op);
    SZ(kfd_criu_device_bucket);
    OFF(kfd_criu_device_bucket, user_gpu_id); OFF(kfd_criu_device_bucket, actual_gpu_id);
    OFF(kfd_criu_device_bucket, drm_fd); OFF(kfd_criu_device_bucket, pad);
    SZ(kfd_criu_bo_bucket);
    OFF(kfd_criu_bo_bucket, addr); OFF(kfd_criu_bo_bucket, size);
    OFF(kfd_criu_bo_bucket, offset); OFF(kfd_criu_bo_bucket, restored_offset);
    OFF(kfd_criu_bo_bucket, gpu_id); OFF(kfd_criu_bo_bucket, alloc_flags);
    OFF(kfd_criu_bo_bucket, dmabuf_fd); OFF(kfd_criu_bo_bucket, pad);
    NUM(AMDKFD_IOC_GET_VERSION); NUM(AMDKFD_IOC_CRIU_OP);
    NUM(KFD_CRIU_OP_PROCESS_INFO); NUM(KFD_CRIU_OP_CHECKPOINT); NUM(KFD_CRIU_OP_UNPAUSE);
    NUM(KFD_CRIU_OP_RESTORE); NUM(KFD_CRIU_OP_RESUME);
    NUM(KFD_IOC_ALLOC_MEM_FLAGS_VRAM); NUM(KFD_IOC_ALLOC_MEM_FLAGS_GTT);
    NUM(KFD_IOC_ALLOC_MEM_FLAGS_USERPTR); NUM(KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL);
    NUM(KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP);
    NUM(KFD_INVALID_FD);

    SZ(amdgpu_bo_alloc_request);
    OFF(amdgpu_bo_alloc_request, phys_alignment); OFF(amdgpu_bo_alloc_request, preferred_heap);
    OFF(amdgpu_bo_alloc_request, flags);
    SZ(amdgpu_bo_import_result); OFF(amdgpu_bo_import_result, alloc_size);
    SZ(amdgpu_cs_ib_info); OFF(amdgpu_cs_ib_info, ib_mc_address); OFF(amdgpu_cs_ib_info, size);
    SZ(amdgpu_cs_fence_info); OFF(amdgpu_cs_fence_info, offset);
    SZ(amdgpu_cs_fence);
    OFF(amdgpu_cs_fence, ip_type); OFF(amdgpu_cs_fence, ip_instance);
    OFF(amdgpu_cs_fence, ring); OFF(amdgpu_cs_fence, fence);
    SZ(amdgpu_cs_request);
    OFF(amdgpu_cs_request, ip_type); OFF(amdgpu_cs_request, ip_instance);
    OFF(amdgpu_cs_request, ring); OFF(amdgpu_cs_request, resources);
    OFF(amdgpu_cs_request, number_of_dependencies); OFF(amdgpu_cs_request, dependencies);
    OFF(amdgpu_cs_request, number_of_ibs); OFF(amdgpu_cs_request, ibs);
    OFF(amdgpu_cs_request, seq_no); OFF(amdgpu_cs_request, fence_info);
    SZ(amdgpu_gpu_info);
    OFF(amdgpu_gpu_info, family_id); OFF(amdgpu_gpu_info, ids_flags);
    OFF(amdgpu_gpu_info, gb_tile_mode); OFF(amdgpu_gpu_info, cu_bitmap);
    OFF(amdgpu_gpu_info, pci_rev_id);
    NUM(amdgpu_bo_handle_type_dma_buf_fd); NUM(amdgpu_gpu_va_range_general);
    NUM(AMDGPU_VA_OP_MAP); NUM(AMDGPU_VA_OP_UNMAP); NUM(AMDGPU_HW_IP_DMA);
    NUM(AMDGPU_GEM_DOMAIN_GTT); NUM(AMDGPU_FAMILY_AI); NUM(AMDGPU_TIMEOUT_INFINITE);
    return 0;
}
"#;

fn c_facts() -> HashMap<String, u64> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("uapi.c");
    let bin = dir.path().join("uapi");
    std::fs::write(&src, PROGRAM).unwrap();
    // <linux/kfd_ioctl.h> includes <drm/drm.h>; Debian ships the DRM UAPI headers only in
    // libdrm-dev (/usr/include/libdrm), so `drm/` is pointed there.
    let inc = dir.path().join("inc");
    std::fs::create_dir(&inc).unwrap();
    std::os::unix::fs::symlink("/usr/include/libdrm", inc.join("drm")).unwrap();
    let out = Command::new("cc")
        .arg("-I")
        .arg(&inc)
        .args(["-I/usr/include/libdrm", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run cc (install build-essential, linux-libc-dev and libdrm-dev)");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&bin).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            let kind = it.next().unwrap();
            let name = it.next().unwrap();
            let v: u64 = it.next().unwrap().parse().unwrap();
            (format!("{kind} {name}"), v)
        })
        .collect()
}

macro_rules! expect_size {
    ($f:expr, $c:literal, $t:ty) => {
        assert_eq!(
            $f[concat!("sizeof ", $c)],
            size_of::<$t>() as u64,
            "sizeof {}",
            $c
        )
    };
}

macro_rules! expect_offsets {
    ($f:expr, $c:literal, $t:ty, [$($field:ident),* $(,)?]) => {
        $(
            assert_eq!(
                $f[concat!("offsetof ", $c, ".", stringify!($field))],
                offset_of!($t, $field) as u64,
                "offsetof {}.{}", $c, stringify!($field)
            );
        )*
    };
}

#[test]
fn kfd_structs_match_linux_kfd_ioctl_h_in_size_and_field_offsets() {
    let f = c_facts();
    expect_size!(f, "kfd_ioctl_get_version_args", KfdGetVersionArgs);
    expect_offsets!(
        f,
        "kfd_ioctl_get_version_args",
        KfdGetVersionArgs,
        [minor_version]
    );
    expect_size!(f, "kfd_ioctl_criu_args", KfdCriuArgs);
    expect_offsets!(
        f,
        "kfd_ioctl_criu_args",
        KfdCriuArgs,
        [
            devices,
            bos,
            priv_data,
            priv_data_size,
            num_devices,
            num_bos,
            num_objects,
            pid,
            op
        ]
    );
    expect_size!(f, "kfd_criu_device_bucket", KfdCriuDeviceBucket);
    expect_offsets!(
        f,
        "kfd_criu_device_bucket",
        KfdCriuDeviceBucket,
        [user_gpu_id, actual_gpu_id, drm_fd, pad]
    );
    expect_size!(f, "kfd_criu_bo_bucket", KfdCriuBoBucket);
    expect_offsets!(
        f,
        "kfd_criu_bo_bucket",
        KfdCriuBoBucket,
        [
            addr,
            size,
            offset,
            restored_offset,
            gpu_id,
            alloc_flags,
            dmabuf_fd,
            pad
        ]
    );
}

#[test]
fn kfd_ioctl_numbers_and_constants_match_the_header_macros() {
    let f = c_facts();
    assert_eq!(
        f["value AMDKFD_IOC_GET_VERSION"],
        u64::from(AMDKFD_IOC_GET_VERSION)
    );
    assert_eq!(f["value AMDKFD_IOC_CRIU_OP"], u64::from(AMDKFD_IOC_CRIU_OP));
    assert_eq!(
        f["value KFD_CRIU_OP_PROCESS_INFO"],
        CriuOp::ProcessInfo as u64
    );
    assert_eq!(f["value KFD_CRIU_OP_CHECKPOINT"], CriuOp::Checkpoint as u64);
    assert_eq!(f["value KFD_CRIU_OP_UNPAUSE"], CriuOp::Unpause as u64);
    assert_eq!(f["value KFD_CRIU_OP_RESTORE"], CriuOp::Restore as u64);
    assert_eq!(f["value KFD_CRIU_OP_RESUME"], CriuOp::Resume as u64);
    assert_eq!(
        f["value KFD_IOC_ALLOC_MEM_FLAGS_VRAM"],
        u64::from(alloc_flags::VRAM)
    );
    assert_eq!(
        f["value KFD_IOC_ALLOC_MEM_FLAGS_GTT"],
        u64::from(alloc_flags::GTT)
    );
    assert_eq!(
        f["value KFD_IOC_ALLOC_MEM_FLAGS_USERPTR"],
        u64::from(alloc_flags::USERPTR)
    );
    assert_eq!(
        f["value KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL"],
        u64::from(alloc_flags::DOORBELL)
    );
    assert_eq!(
        f["value KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP"],
        u64::from(alloc_flags::MMIO_REMAP)
    );
    assert_eq!(f["value KFD_INVALID_FD"], u64::from(KFD_INVALID_FD));
}

#[test]
fn libdrm_amdgpu_structs_match_amdgpu_h_in_size_and_field_offsets() {
    let f = c_facts();
    expect_size!(f, "amdgpu_bo_alloc_request", AmdgpuBoAllocRequest);
    expect_offsets!(
        f,
        "amdgpu_bo_alloc_request",
        AmdgpuBoAllocRequest,
        [phys_alignment, preferred_heap, flags]
    );
    expect_size!(f, "amdgpu_bo_import_result", AmdgpuBoImportResult);
    expect_offsets!(
        f,
        "amdgpu_bo_import_result",
        AmdgpuBoImportResult,
        [alloc_size]
    );
    expect_size!(f, "amdgpu_cs_ib_info", AmdgpuCsIbInfo);
    expect_offsets!(
        f,
        "amdgpu_cs_ib_info",
        AmdgpuCsIbInfo,
        [ib_mc_address, size]
    );
    expect_size!(f, "amdgpu_cs_fence_info", AmdgpuCsFenceInfo);
    expect_offsets!(f, "amdgpu_cs_fence_info", AmdgpuCsFenceInfo, [offset]);
    expect_size!(f, "amdgpu_cs_fence", AmdgpuCsFence);
    expect_offsets!(
        f,
        "amdgpu_cs_fence",
        AmdgpuCsFence,
        [ip_type, ip_instance, ring, fence]
    );
    expect_size!(f, "amdgpu_cs_request", AmdgpuCsRequest);
    expect_offsets!(
        f,
        "amdgpu_cs_request",
        AmdgpuCsRequest,
        [
            ip_type,
            ip_instance,
            ring,
            resources,
            number_of_dependencies,
            dependencies,
            number_of_ibs,
            ibs,
            seq_no,
            fence_info
        ]
    );
    expect_size!(f, "amdgpu_gpu_info", AmdgpuGpuInfo);
    expect_offsets!(
        f,
        "amdgpu_gpu_info",
        AmdgpuGpuInfo,
        [family_id, ids_flags, gb_tile_mode, cu_bitmap, pci_rev_id]
    );
}

#[test]
fn libdrm_amdgpu_constants_match_the_headers() {
    let f = c_facts();
    assert_eq!(
        f["value amdgpu_bo_handle_type_dma_buf_fd"],
        u64::from(AMDGPU_BO_HANDLE_TYPE_DMA_BUF_FD)
    );
    assert_eq!(
        f["value amdgpu_gpu_va_range_general"],
        u64::from(AMDGPU_GPU_VA_RANGE_GENERAL)
    );
    assert_eq!(f["value AMDGPU_VA_OP_MAP"], u64::from(AMDGPU_VA_OP_MAP));
    assert_eq!(f["value AMDGPU_VA_OP_UNMAP"], u64::from(AMDGPU_VA_OP_UNMAP));
    assert_eq!(f["value AMDGPU_HW_IP_DMA"], u64::from(AMDGPU_HW_IP_DMA));
    assert_eq!(
        f["value AMDGPU_GEM_DOMAIN_GTT"],
        u64::from(AMDGPU_GEM_DOMAIN_GTT)
    );
    assert_eq!(f["value AMDGPU_FAMILY_AI"], u64::from(AMDGPU_FAMILY_AI));
    assert_eq!(f["value AMDGPU_TIMEOUT_INFINITE"], AMDGPU_TIMEOUT_INFINITE);
}

#[test]
fn ioctl_number_helpers_mirror_the_kernel_macros_for_other_directions() {
    // _IO('K', 0x30), _IOW('K', 0x04, 12 bytes) computed by hand from asm-generic/ioctl.h.
    assert_eq!(io_none(b'K', 0x30), 0x0000_4B30);
    assert_eq!(iow::<[u8; 12]>(b'K', 0x04), 0x400C_4B04);
    assert_eq!(ior::<u32>(b'd', 0x01), 0x8004_6401);
}

#[test]
fn libdrm_amdgpu_loads_and_refuses_a_file_that_is_not_a_render_node() {
    let lib = match LibDrmAmdgpu::load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let f = std::fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsFd;
    assert!(
        Device::initialize(&lib, f.as_fd()).is_err(),
        "amdgpu_device_initialize accepted /dev/null"
    );
}
