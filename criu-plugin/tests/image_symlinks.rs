//! Image files are opened with `O_NOFOLLOW`: a symbolic link planted in the image directory
//! cannot make the plugin read or write outside it, and the error says it is a link.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferry_criu_plugin::backends::amdgpu::images as amd_images;
use ferry_criu_plugin::backends::amdgpu::proto::CriuRenderNode;
use ferry_criu_plugin::backends::nvidia::images::NvidiaImage;
use ferry_criu_plugin::host::Host;

fn setup() -> (tempfile::TempDir, std::path::PathBuf, Host) {
    let root = tempfile::tempdir().unwrap();
    let img = root.path().join("img");
    std::fs::create_dir(&img).unwrap();
    let host = Host::new(Some(img.clone()));
    (root, img, host)
}

#[test]
fn a_symlinked_image_is_refused_with_a_clear_error() {
    let (root, img, host) = setup();
    let secret = root.path().join("secret");
    std::fs::write(&secret, b"tenant b's memory").unwrap();
    std::os::unix::fs::symlink(&secret, img.join("pages-1.img")).unwrap();

    assert!(host.image_exists("pages-1.img"));
    let e = host.open_image("pages-1.img").unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");

    // Through the backends' readers too.
    std::os::unix::fs::symlink(&secret, img.join("amdgpu-renderD-1.img")).unwrap();
    let e = amd_images::read_message::<CriuRenderNode>(&host, "amdgpu-renderD-1.img")
        .unwrap_err()
        .to_string();
    assert!(e.contains("symbolic link"), "{e}");
    std::os::unix::fs::symlink(&secret, img.join("ferry-nvidia.json")).unwrap();
    let e = host.open_image("ferry-nvidia.json").map(NvidiaImage::read);
    assert!(e.unwrap_err().to_string().contains("symbolic link"));

    // A dangling link counts as present, so it is refused rather than silently skipped.
    std::os::unix::fs::symlink(root.path().join("nowhere"), img.join("gone.img")).unwrap();
    assert!(host.image_exists("gone.img"));
    assert!(host.open_image("gone.img").is_err());
}

#[test]
fn writes_never_follow_a_planted_link() {
    let (root, img, host) = setup();
    let target = root.path().join("target");
    std::fs::write(&target, b"unchanged").unwrap();
    std::os::unix::fs::symlink(&target, img.join("new.img")).unwrap();
    assert!(host.create_image("new.img").is_err());
    assert!(host.write_image("new.img", b"evil").is_err());
    // `replace_file` writes `<name>.partial` then renames it over `<name>`.
    std::os::unix::fs::symlink(&target, img.join("stats.json.partial")).unwrap();
    let e = host
        .replace_file("stats.json", b"evil")
        .unwrap_err()
        .to_string();
    assert!(e.contains("symbolic link"), "{e}");
    assert_eq!(std::fs::read(&target).unwrap(), b"unchanged");
    // A link at the final name is replaced by the rename, never written through.
    std::fs::remove_file(img.join("stats.json.partial")).unwrap();
    std::os::unix::fs::symlink(&target, img.join("stats.json")).unwrap();
    host.replace_file("stats.json", b"{}").unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"unchanged");
    assert_eq!(std::fs::read(img.join("stats.json")).unwrap(), b"{}");
    // Plain files still work.
    host.write_image("plain.img", b"ok").unwrap();
    assert_eq!(
        std::io::read_to_string(host.open_image("plain.img").unwrap()).unwrap(),
        "ok"
    );
}
