//! Capabilities: preopened directories read-write and read-only, and every way out of
//! them that a guest can try.

use std::fs;

use crate::support::{guest, scratch, tern};

#[test]
fn guest_works_with_files_in_a_read_write_preopen() {
    let d = scratch();
    let data = d.path().join("data");
    fs::create_dir(&data).expect("mkdir");
    let out = tern(d.path())
        .args(["run", "--dir"])
        .arg(format!("{}::/work", data.display()))
        .arg(guest("files"))
        .arg("/work")
        .run();
    assert_eq!(
        out.succeeds(),
        "write ok\nread at 5: one\nsize 18\nrename and unlink ok\nentry: moved.txt\n"
    );
    assert_eq!(
        fs::read_to_string(data.join("report.txt")).expect("report"),
        "line one\nline two\n"
    );
    assert_eq!(
        fs::read_to_string(data.join("sub/moved.txt")).expect("moved"),
        "moved\n"
    );
    assert!(!data.join("scratch.txt").exists());
    assert!(!data.join("sub/tmp.txt").exists());
}

#[test]
fn host_path_is_the_guest_path_without_double_colon() {
    let d = scratch();
    let data = d.path().join("data");
    fs::create_dir(&data).expect("mkdir");
    let host = data.display().to_string();
    let out = tern(d.path())
        .args(["run", "--dir", &host])
        .arg(guest("files"))
        .arg(&host)
        .run();
    out.succeeds();
    assert!(data.join("report.txt").exists());
}

#[test]
fn read_only_preopen_refuses_writes_inside_the_guest() {
    let d = scratch();
    let ro = d.path().join("ro");
    fs::create_dir(&ro).expect("mkdir");
    fs::write(ro.join("input.txt"), "precious\n").expect("write");
    let out = tern(d.path())
        .args(["run", "--ro-dir"])
        .arg(format!("{}::/ro", ro.display()))
        .arg(guest("readonly"))
        .arg("/ro")
        .run();
    let text = out.succeeds();
    assert!(text.starts_with("read: precious\n"), "{text}");
    for op in ["create", "append", "unlink", "mkdir"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(op))
            .expect("a line per operation");
        assert!(
            !line.ends_with("allowed"),
            "{op} must fail in a read-only preopen: {line}"
        );
    }
    assert_eq!(
        fs::read_to_string(ro.join("input.txt")).expect("read"),
        "precious\n"
    );
    let names: Vec<_> = fs::read_dir(&ro)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        names,
        ["input.txt"],
        "nothing created in a read-only preopen"
    );
}

/// `..`, absolute paths, planted symlinks and symlinks the guest makes all stay inside.
#[test]
fn no_path_leads_out_of_a_preopen() {
    let d = scratch();
    let pre = d.path().join("pre");
    fs::create_dir_all(pre.join("sub")).expect("mkdir");
    fs::write(d.path().join("secret.txt"), "TOP SECRET\n").expect("write secret");
    std::os::unix::fs::symlink("..", pre.join("link-out")).expect("plant symlink");
    let out = tern(d.path())
        .args(["run", "--dir"])
        .arg(format!("{}::/data", pre.display()))
        .arg(guest("escape"))
        .arg("/data")
        .run();
    let text = out.succeeds();
    assert!(!text.contains("ESCAPED"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
    assert_eq!(text.matches("BLOCKED").count(), 8, "{text}");
    assert_eq!(
        fs::read_to_string(d.path().join("secret.txt")).expect("read"),
        "TOP SECRET\n"
    );
}

#[test]
fn without_preopens_no_file_is_reachable() {
    let d = scratch();
    let out = tern(d.path())
        .arg("run")
        .arg(guest("escape"))
        .arg("/")
        .run();
    let text = out.succeeds();
    assert!(!text.contains("ESCAPED"), "{text}");
}
