//! Live migration on loopback between two real `tern` processes: the guest's output and
//! files are the same as an uninterrupted run's, and a destination that refuses, fails
//! or dies leaves the guest running on the source as if nothing had happened.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::support::{Run, guest, scratch, tern};

/// A `tern receive` listening on a free loopback port.
struct Receiver {
    child: Child,
    /// The address it listens on.
    addr: String,
    /// The rest of its stderr, drained as it comes so that it never blocks.
    err: std::thread::JoinHandle<String>,
}

fn receiver(dir: &Path, args: &[String]) -> Receiver {
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
    let err = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut rest);
        rest
    });
    Receiver { child, addr, err }
}

impl Receiver {
    /// Waits for it to end by itself.
    fn finish(self) -> Run {
        let out = self.child.wait_with_output().expect("receiver ends");
        let mut run = Run::from(out);
        run.stderr = self.err.join().expect("stderr");
        run
    }

    /// Ends it if it is still listening a moment after what it was sent; its code is
    /// `None` then.
    fn stop(mut self) -> Run {
        for _ in 0..20 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.finish();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let out = self.child.wait_with_output().expect("receiver ends");
        Run {
            code: None,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: self.err.join().expect("stderr"),
        }
    }
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
    let r = receiver(d.path(), &[format!("--dir={}::/data", dst.display())]);
    let from = source(d.path(), &r.addr, &src);
    let to = r.finish();
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
    // No directory for the guest's /data volume: refused before it is accepted, so the
    // receiver says so and goes on listening.
    let r = receiver(d.path(), &[]);
    let from = source(d.path(), &r.addr, &src);
    let to = r.stop();
    assert_eq!(to.code, None, "still listening: {to:?}");
    assert!(
        to.stderr
            .contains("volume /data of the snapshot has no host directory")
            && to.stderr.contains("still listening"),
        "{to:?}"
    );
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
    let r = receiver(d.path(), &[format!("--ro-dir={}::/data", dst.display())]);
    let from = source(d.path(), &r.addr, &src);
    let to = r.finish();
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
    let mut r = receiver(d.path(), &[format!("--dir={}::/data", dst.display())]);
    // Killed before any migration arrives: the source finds the port closed or the
    // connection reset, whichever phase it reaches.
    r.child.kill().expect("kill receiver");
    let _ = r.child.wait();
    let from = source(d.path(), &r.addr, &src);
    assert_resumed_locally(&from, d.path(), &src, "migration failed");
}

#[test]
fn sqlite_with_an_open_database_migrates_without_losing_a_committed_row() {
    let d = scratch();
    let wasm = crate::support::sqlite_guest();
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

    let r = receiver(d.path(), &[format!("--dir={}::/data", dst.display())]);
    let from = tern(d.path())
        .args(["run", "--migrate-to", &r.addr, "--migrate-after", "300ms"])
        .args(args(&src))
        .run();
    let to = r.finish();
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

/// Runs `module` with `stdin`, `--migrate-to` a receiver and `--migrate-after after`,
/// for migrations that never happen: the receiver is stopped once the source is done.
fn migrate_to_nowhere(dir: &Path, module: &Path, stdin: &[u8], after: &str) -> Run {
    let r = receiver(dir, &[]);
    let from = tern(dir)
        .args(["run", "--migrate-to", &r.addr, "--migrate-after", after])
        .arg(module)
        .stdin(stdin)
        .run();
    r.stop();
    from
}

/// A guest that has read its stdin is not migrated: the rest of its input is on this
/// machine. It finishes here, having read every line once.
#[test]
fn a_guest_reading_stdin_is_not_migrated() {
    let d = scratch();
    let input: Vec<u8> = (0..800)
        .flat_map(|i| format!("line {i:05}\n").into_bytes())
        .collect();
    let reader = guest("slow_reader");
    let whole = tern(d.path()).arg("run").arg(&reader).stdin(&input).run();
    assert_eq!(whole.code, Some(0), "{whole:?}");
    let from = migrate_to_nowhere(d.path(), &reader, &input, "100ms");
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
    let from = migrate_to_nowhere(d.path(), &guest("hello"), b"", "5s");
    assert_eq!(from.code, Some(0), "{from:?}");
    assert!(
        from.stderr
            .contains("the guest finished here before it could be migrated"),
        "{from:?}"
    );
    assert!(!from.stderr.contains("keeps running"), "{from:?}");
}

/// Where a relay cuts the source's stream: in the first frame tagged `tag`, after
/// `keep` of its bytes (counting its 5-byte head) have gone through; `M` is the
/// stream's 8-byte magic.
#[derive(Debug, Clone, Copy)]
struct Cut {
    tag: u8,
    keep: usize,
}

/// A relay on a free loopback port to `to` for one connection, which reads the
/// source's stream frame by frame (`u32` length, tag, payload) and forwards it, the
/// destination's replies whole, and cuts both ways at `cut`: the source's stream dies
/// there, whatever phase that is. Returns its address and a handle giving the tags of
/// the frames that went through whole.
fn cutting_relay(to: String, cut: Option<Cut>) -> (String, std::thread::JoinHandle<Vec<u8>>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let addr = listener.local_addr().expect("addr").to_string();
    let handle = std::thread::spawn(move || {
        let mut tags = Vec::new();
        let Ok((mut from, _)) = listener.accept() else {
            return tags;
        };
        let Ok(mut there) = std::net::TcpStream::connect(&to) else {
            return tags;
        };
        let (mut back_from, mut back_to) = (
            there.try_clone().expect("clone"),
            from.try_clone().expect("clone"),
        );
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut back_from, &mut back_to);
        });
        // The stream's magic first, then frames.
        let mut magic = [0u8; 8];
        if from.read_exact(&mut magic).is_err() {
            return tags;
        }
        if let Some(c) = cut.filter(|c| c.tag == b'M') {
            let _ = there.write_all(&magic[..c.keep.min(8)]);
            let _ = there.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
            return tags;
        }
        if there.write_all(&magic).is_err() {
            return tags;
        }
        loop {
            let mut head = [0u8; 5];
            if from.read_exact(&mut head).is_err() {
                break;
            }
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let mut frame = head.to_vec();
            frame.resize(4 + len.max(1), 0);
            if from.read_exact(&mut frame[5..]).is_err() {
                break;
            }
            if let Some(c) = cut.filter(|c| c.tag == head[4]) {
                let _ = there.write_all(&frame[..c.keep.min(frame.len())]);
                break;
            }
            if there.write_all(&frame).is_err() {
                break;
            }
            tags.push(head[4]);
        }
        let _ = there.shutdown(std::net::Shutdown::Both);
        let _ = from.shutdown(std::net::Shutdown::Both);
        tags
    });
    (addr, handle)
}

/// Everything about a directory tree a failed migration must leave alone: each
/// entry's path, mode, mtime and contents, and the directory's own mode and mtime.
fn picture(dir: &Path) -> Vec<(String, u32, std::time::SystemTime, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let meta = std::fs::symlink_metadata(&d).expect("meta");
        let data = if meta.is_file() {
            std::fs::read(&d).expect("read")
        } else {
            Vec::new()
        };
        out.push((
            d.display().to_string(),
            meta.permissions().mode(),
            meta.modified().expect("mtime"),
            data,
        ));
        if meta.is_dir() {
            for e in std::fs::read_dir(&d).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A destination volume that already holds files: a read-only one, a large one in a
/// subdirectory, and an older journal.
fn occupied_volume(parent: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dst = parent.join("dst");
    std::fs::create_dir_all(dst.join("sub")).expect("mkdir");
    std::fs::write(dst.join("small.txt"), "kept as it is\n").expect("write");
    std::fs::set_permissions(
        dst.join("small.txt"),
        std::fs::Permissions::from_mode(0o444),
    )
    .expect("chmod");
    std::fs::write(dst.join("sub/big.bin"), vec![5u8; 3 << 20]).expect("write");
    std::fs::write(dst.join("journal.txt"), "an older journal\n").expect("write");
    dst
}

/// A migration cut at every phase (the hello, before and inside each kind of frame of
/// the pre-copy rounds, inside the final frame) leaves the destination's directory byte
/// for byte as it was, modes and mtimes included, with nothing beside it; the guest
/// finishes on the source as if nothing had happened.
#[test]
fn a_migration_cut_at_any_point_changes_nothing_on_the_destination() {
    let d = scratch();
    let src_parent = d.path().join("s");
    // A whole migration through a relay that never cuts: which frames it sends.
    let tags = {
        let parent = d.path().join("whole");
        let dst = occupied_volume(&parent);
        let src = src_parent.join("whole");
        std::fs::create_dir_all(&src).expect("mkdir");
        let r = receiver(d.path(), &[format!("--dir={}::/data", dst.display())]);
        let (relay, tags) = cutting_relay(r.addr.clone(), None);
        let from = source(d.path(), &relay, &src);
        let to = r.finish();
        assert!(from.stderr.contains("migrated to"), "{from:?}");
        assert_eq!(to.code, Some(0), "{to:?}");
        tags.join().expect("relay")
    };
    for tag in [b'H', b'P', b'F', b'K', b'Z'] {
        assert!(
            tags.contains(&tag),
            "no {:?} frame in {tags:?}",
            tag as char
        );
    }
    let cuts = [
        Cut { tag: b'M', keep: 4 },
        Cut { tag: b'H', keep: 0 },
        Cut { tag: b'H', keep: 3 },
        Cut {
            tag: b'H',
            keep: 200,
        },
        Cut { tag: b'P', keep: 0 },
        Cut {
            tag: b'P',
            keep: 5000,
        },
        Cut {
            tag: b'F',
            keep: 40,
        },
        Cut { tag: b'K', keep: 0 },
        Cut { tag: b'Z', keep: 0 },
        Cut {
            tag: b'Z',
            keep: 30,
        },
    ];
    for (i, cut) in cuts.into_iter().enumerate() {
        let parent = d.path().join(format!("cut{i}"));
        let dst = occupied_volume(&parent);
        let before = picture(&parent);
        let src = src_parent.join(format!("cut{i}"));
        std::fs::create_dir_all(&src).expect("mkdir");
        let r = receiver(d.path(), &[format!("--dir={}::/data", dst.display())]);
        let (relay, _) = cutting_relay(r.addr.clone(), Some(cut));
        let from = source(d.path(), &relay, &src);
        let to = r.stop();
        // Cut before it accepted, the receiver goes on listening; after, it fails.
        assert!(
            to.code == Some(1)
                || (matches!(cut.tag, b'M' | b'H') && to.stderr.contains("still listening")),
            "{cut:?}: {to:?}"
        );
        assert!(to.stdout.is_empty(), "{cut:?}: the guest ran there: {to:?}");
        assert_resumed_locally(&from, d.path(), &src, "migration failed");
        assert!(
            picture(&parent) == before,
            "{cut:?}: the destination changed"
        );
    }
}

/// `len` bytes of xorshift noise from `seed`: incompressible, and the same every run.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// KiB the source says it sent.
fn kib_sent(from: &Run) -> u64 {
    let line = from
        .stderr
        .lines()
        .find(|l| l.starts_with("migrated to"))
        .unwrap_or_else(|| panic!("not migrated: {from:?}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "KiB")
        .unwrap_or_else(|| panic!("no KiB in {line:?}"));
    words[at - 1].parse().expect("a number")
}

/// A read-write volume sends only the blocks the destination lacks: a 4 MiB file the
/// destination already holds costs nothing; one it lacks goes over whole, arriving
/// with the source's mode and mtime.
#[test]
fn only_what_the_destination_lacks_is_sent() {
    use std::os::unix::fs::PermissionsExt as _;
    let d = scratch();
    // Incompressible, so that what is sent is what is counted.
    let data = noise(4 << 20, 0x9E37_79B9_7F4A_7C15);
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    let mut sent = Vec::new();
    for dst_has_it in [true, false] {
        let case = d.path().join(format!("has-{dst_has_it}"));
        let (src, dst) = (case.join("src"), case.join("dst"));
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::create_dir_all(&dst).expect("mkdir");
        let big = src.join("big.bin");
        std::fs::write(&big, &data).expect("write");
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        std::fs::File::options()
            .write(true)
            .open(&big)
            .and_then(|f| f.set_modified(old))
            .expect("mtime");
        if dst_has_it {
            std::fs::copy(&big, dst.join("big.bin")).expect("copy");
            std::fs::write(dst.join("theirs.txt"), "the destination's own\n").expect("write");
        }
        let r = receiver(d.path(), &[format!("--dir={}::/data", dst.display())]);
        let from = source(d.path(), &r.addr, &src);
        let to = r.finish();
        assert_eq!(to.code, Some(0), "{to:?}");
        sent.push(kib_sent(&from));
        let there = std::fs::metadata(dst.join("big.bin")).expect("big.bin there");
        assert_eq!(std::fs::read(dst.join("big.bin")).expect("read"), data);
        assert_eq!(there.permissions().mode() & 0o777, 0o640);
        assert_eq!(there.modified().expect("mtime"), old);
        if dst_has_it {
            // A file only the destination has is its own: kept, and said.
            assert!(
                from.stderr.contains(
                    "the destination keeps 1 file(s) of its own that the source does not have (/data/theirs.txt)"
                ),
                "{from:?}"
            );
            assert_eq!(
                std::fs::read_to_string(dst.join("theirs.txt")).expect("kept"),
                "the destination's own\n"
            );
        }
    }
    let (had, lacked) = (sent[0], sent[1]);
    assert!(
        had + 4096 <= lacked,
        "{had} KiB sent when the destination had the file, {lacked} KiB when it had not"
    );
    assert!(had < 4096, "{had} KiB sent for a file the destination had");
}

/// The peak resident memory of process `pid`, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Connects to `addr`, sends `bytes`, then holds the connection for `hold` (a stall) and
/// closes it.
fn hostile(addr: &str, bytes: &[u8], hold: std::time::Duration) {
    use std::io::Write as _;
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    let _ = c.write_all(bytes);
    std::thread::sleep(hold);
}

/// Gives the receiver a moment to handle what it was sent.
fn wait_a_moment() {
    std::thread::sleep(std::time::Duration::from_millis(300));
}

/// Hostile peers — random bytes, an HTTP request, a frame claiming 2 GiB, a hello cut
/// short, a peer that says nothing — each get one line and are dropped: the receiver
/// goes on listening with flat memory, and then takes a real migration.
#[test]
fn hostile_peers_are_dropped_and_the_receiver_lives_on() {
    let d = scratch();
    let (src, dst) = (d.path().join("src"), d.path().join("dst"));
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::create_dir_all(&dst).expect("mkdir");
    let r = receiver(d.path(), &[format!("--dir={}::/data", dst.display())]);
    wait_a_moment();
    let before = peak_rss_kib(r.child.id());
    let random = noise(4096, 0x2545_F491_4F6C_DD1D);
    let quick = std::time::Duration::from_millis(50);
    hostile(&r.addr, &random, quick);
    hostile(&r.addr, b"GET / HTTP/1.0\r\n\r\n", quick);
    // A Tern stream whose hello claims 2 GiB, then stops.
    let mut huge = b"TERNMIG\x02".to_vec();
    huge.extend_from_slice(&0x7fff_ffffu32.to_le_bytes());
    huge.push(b'H');
    huge.extend_from_slice(&[0u8; 1000]);
    hostile(&r.addr, &huge, quick);
    // A hello whose length is allowed, cut after a few bytes.
    let mut cut = b"TERNMIG\x02".to_vec();
    cut.extend_from_slice(&(1u32 << 20).to_le_bytes());
    cut.push(b'H');
    cut.extend_from_slice(b"{\"protocol\":2");
    hostile(&r.addr, &cut, quick);
    // Nothing at all, for longer than the receiver waits for a greeting.
    hostile(&r.addr, b"", std::time::Duration::from_secs(6));
    wait_a_moment();
    let after = peak_rss_kib(r.child.id());
    assert!(
        after < before + 16 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    // Still alive, it takes a real migration.
    let from = source(d.path(), &r.addr, &src);
    let to = r.finish();
    assert!(from.stderr.contains("migrated to"), "{from:?}");
    assert_eq!(to.code, Some(0), "{to:?}");
    for needle in [
        "not a Tern migration (it began with",
        "not a Tern migration (it began with \"GET / HT\")",
        "a frame 'H' of 2147483647 bytes, where the protocol allows",
        "the peer closed the connection inside a frame",
        "sent nothing within 5 s",
    ] {
        assert!(
            to.stderr.contains(needle),
            "{needle:?} not in {}",
            to.stderr
        );
    }
    assert_eq!(
        to.stderr.matches("still listening").count(),
        5,
        "one line each: {}",
        to.stderr
    );
}
