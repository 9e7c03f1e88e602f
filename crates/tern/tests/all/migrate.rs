//! Live migration on loopback between two real `tern` processes: the guest's output and
//! files are the same as an uninterrupted run's, and a destination that refuses, fails
//! or dies leaves the guest running on the source as if nothing had happened.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::support::{Run, guest, scratch, tern};

/// A `tern receive` listening on a free loopback port, and that port's address.
fn receiver(dir: &Path, args: &[String]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .env_clear()
        .env("TERN_CACHE_DIR", dir.join("cache"))
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["receive", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning tern receive");
    let mut err = BufReader::new(child.stderr.take().expect("stderr piped"));
    let mut line = String::new();
    err.read_line(&mut line)
        .expect("reading receive's first line");
    let addr = line
        .trim()
        .strip_prefix("receive: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    // Keep draining stderr so the receiver never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    });
    (child, addr)
}

fn journal_args(vol: &Path) -> Vec<String> {
    vec![
        format!("--dir={}::/data", vol.display()),
        guest("journal").display().to_string(),
        "/data".into(),
        "40".into(),
        "25000000".into(),
    ]
}

/// The uninterrupted run: its stdout and journal.
fn reference(dir: &Path) -> (String, Vec<u8>) {
    let vol = dir.join("ref");
    std::fs::create_dir_all(&vol).expect("mkdir");
    let run = tern(dir).arg("run").args(journal_args(&vol)).run();
    assert_eq!(run.code, Some(0), "{run:?}");
    (
        run.stdout,
        std::fs::read(vol.join("journal.txt")).expect("journal"),
    )
}

fn source(dir: &Path, addr: &str, vol: &Path) -> Run {
    tern(dir)
        .args(["run", "--migrate-to", addr, "--migrate-after", "100ms"])
        .args(journal_args(vol))
        .run()
}

#[test]
fn a_guest_with_open_files_moves_and_finishes_on_the_destination() {
    let d = scratch();
    let (want_out, want_journal) = reference(d.path());
    let (src, dst) = (d.path().join("src"), d.path().join("dst"));
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::create_dir_all(&dst).expect("mkdir");
    let (child, addr) = receiver(d.path(), &[format!("--dir={}::/data", dst.display())]);
    let from = source(d.path(), &addr, &src);
    let to = Run::from(child.wait_with_output().expect("receiver ends"));
    assert_eq!(from.code, Some(0), "{from:?}");
    assert!(from.stderr.contains("migrated to"), "{from:?}");
    assert_eq!(to.code, Some(0), "{to:?}");
    assert_eq!(format!("{}{}", from.stdout, to.stdout), want_out);
    assert_eq!(
        std::fs::read(dst.join("journal.txt")).expect("journal"),
        want_journal
    );
}

/// Each way the destination can fail: the guest finishes on the source with the
/// output and files of an uninterrupted run, and says why on stderr.
fn assert_resumed_locally(from: &Run, d: &Path, src: &Path, why: &str) {
    let (want_out, want_journal) = reference(d);
    assert_eq!(from.code, Some(0), "{from:?}");
    assert!(
        from.stderr.contains(why),
        "expected {why:?} in {:?}",
        from.stderr
    );
    assert!(
        from.stderr.contains("the guest keeps running here"),
        "{from:?}"
    );
    assert_eq!(from.stdout, want_out);
    assert_eq!(
        std::fs::read(src.join("journal.txt")).expect("journal"),
        want_journal
    );
}

#[test]
fn no_destination_leaves_the_guest_here() {
    let d = scratch();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let from = source(d.path(), &format!("127.0.0.1:{port}"), &src);
    assert_resumed_locally(&from, d.path(), &src, "cannot connect");
}

#[test]
fn a_destination_that_refuses_leaves_the_guest_here() {
    let d = scratch();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    // No directory for the guest's /data volume.
    let (child, addr) = receiver(d.path(), &[]);
    let from = source(d.path(), &addr, &src);
    let to = Run::from(child.wait_with_output().expect("receiver ends"));
    assert_eq!(to.code, Some(1), "{to:?}");
    assert_resumed_locally(&from, d.path(), &src, "volume /data");
}

#[test]
fn a_destination_that_cannot_restore_leaves_the_guest_here() {
    let d = scratch();
    let (src, dst) = (d.path().join("src"), d.path().join("dst"));
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::create_dir_all(&dst).expect("mkdir");
    // Read-only here: the journal the guest writes is never copied in, and the
    // destination's copy (none) is not the source's.
    let (child, addr) = receiver(d.path(), &[format!("--ro-dir={}::/data", dst.display())]);
    let from = source(d.path(), &addr, &src);
    let to = Run::from(child.wait_with_output().expect("receiver ends"));
    assert_eq!(to.code, Some(1), "{to:?}");
    assert!(
        to.stdout.is_empty(),
        "the guest ran on the destination: {to:?}"
    );
    assert_resumed_locally(
        &from,
        d.path(),
        &src,
        "journal.txt in read-only volume /data is missing here",
    );
    assert_eq!(
        std::fs::read_dir(&dst).expect("dst").count(),
        0,
        "a read-only volume is never written"
    );
}

#[test]
fn a_destination_killed_mid_migration_leaves_the_guest_here() {
    let d = scratch();
    let (src, dst) = (d.path().join("src"), d.path().join("dst"));
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::create_dir_all(&dst).expect("mkdir");
    let (mut child, addr) = receiver(d.path(), &[format!("--dir={}::/data", dst.display())]);
    // Killed before any migration arrives: the source finds the port closed or the
    // connection reset, whichever phase it reaches.
    child.kill().expect("kill receiver");
    let _ = child.wait();
    let from = source(d.path(), &addr, &src);
    assert_resumed_locally(&from, d.path(), &src, "migration failed");
}

/// The SQLite guest, built once with the bench's SQLite (fetched on first use).
fn sqlite_guest() -> std::path::PathBuf {
    use std::sync::OnceLock;
    static BUILT: OnceLock<std::path::PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = crate::support::repo();
            let sources = tern_bench::sqlite::obtain_sources(&root.join("target/sqlite-src"))
                .expect("sqlite sources (scripts/test.sh fetches them)");
            let src = root.join("guests/sqlite_rows.c");
            let text = std::fs::read(&src).expect("guest source");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "guests/sqlite_rows-{:x}.wasm",
                text.iter()
                    .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)))
            ));
            if !out.exists() {
                std::fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
                let tmp = out.with_extension(format!("{}.tmp", std::process::id()));
                tern_bench::sqlite::build_wasm_with_sqlite(&sources, &src, &tmp)
                    .expect("building the sqlite guest");
                std::fs::rename(&tmp, &out).expect("publishing the sqlite guest");
            }
            out
        })
        .clone()
}

#[test]
fn sqlite_with_an_open_database_migrates_without_losing_a_committed_row() {
    let d = scratch();
    let wasm = sqlite_guest();
    let (reference, src, dst) = (
        d.path().join("ref"),
        d.path().join("src"),
        d.path().join("dst"),
    );
    for dir in [&reference, &src, &dst] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    let args = |vol: &Path| {
        vec![
            format!("--dir={}::/data", vol.display()),
            wasm.display().to_string(),
            "/data/rows.db".into(),
            "150".into(),
            "15000000".into(),
        ]
    };
    let whole = tern(d.path()).arg("run").args(args(&reference)).run();
    assert_eq!(whole.code, Some(0), "{whole:?}");
    assert!(whole.stdout.ends_with("rows 150 sum 11175\n"), "{whole:?}");

    let (child, addr) = receiver(d.path(), &[format!("--dir={}::/data", dst.display())]);
    let from = tern(d.path())
        .args(["run", "--migrate-to", &addr, "--migrate-after", "300ms"])
        .args(args(&src))
        .run();
    let to = Run::from(child.wait_with_output().expect("receiver ends"));
    assert_eq!(from.code, Some(0), "{from:?}");
    assert!(from.stderr.contains("migrated to"), "{from:?}");
    assert!(
        from.stdout.contains("committed 0\n"),
        "migrated before any commit: {from:?}"
    );
    assert_eq!(to.code, Some(0), "{to:?}");
    // Every row committed on the source is in the destination's database, and the run
    // as a whole printed what the uninterrupted run printed.
    assert_eq!(format!("{}{}", from.stdout, to.stdout), whole.stdout);
}

/// A guest that has read its stdin is not migrated: the rest of its input is on this
/// machine. It finishes here, having read every line once.
#[test]
fn a_guest_reading_stdin_is_not_migrated() {
    let d = scratch();
    let dst = d.path().join("dst");
    std::fs::create_dir_all(&dst).expect("mkdir");
    let input: Vec<u8> = (0..800)
        .flat_map(|i| format!("line {i:05}\n").into_bytes())
        .collect();
    let reader = guest("slow_reader");
    let whole = tern(d.path()).arg("run").arg(&reader).stdin(&input).run();
    assert_eq!(whole.code, Some(0), "{whole:?}");
    let (child, addr) = receiver(d.path(), &[]);
    let from = tern(d.path())
        .args(["run", "--migrate-to", &addr, "--migrate-after", "100ms"])
        .arg(&reader)
        .stdin(&input)
        .run();
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(from.code, Some(0), "{from:?}");
    assert!(
        from.stderr
            .contains("bytes of its stdin, which cannot follow it to"),
        "{from:?}"
    );
    assert!(from.stderr.contains("800 lines"), "{from:?}");
    assert_eq!(from.stdout, whole.stdout);
}

/// A guest that ends before its migration starts says it finished here.
#[test]
fn a_guest_that_ends_first_says_it_finished_here() {
    let d = scratch();
    let (child, addr) = receiver(d.path(), &[]);
    let from = tern(d.path())
        .args(["run", "--migrate-to", &addr, "--migrate-after", "5s"])
        .arg(guest("hello"))
        .run();
    let mut child = child;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(from.code, Some(0), "{from:?}");
    assert!(
        from.stderr
            .contains("the guest finished here before it could be migrated"),
        "{from:?}"
    );
    assert!(!from.stderr.contains("keeps running"), "{from:?}");
}
