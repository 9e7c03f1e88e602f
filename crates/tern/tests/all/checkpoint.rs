//! Checkpoint and restore: a guest stopped at a safe point and resumed from its snapshot
//! prints exactly what an uninterrupted run prints, under either engine, with its open
//! files; damaged or mismatched snapshots are refused and restore nothing.

use std::path::Path;

use crate::support::{Run, guest, scratch, signal, tern};

/// Runs `args` (a `tern run` command line after `run`) with the checkpoint flags `when`
/// (`--checkpoint-after 30ms`, `--checkpoint-at-safepoint 5000`), then restores with
/// `restore_args`; returns both runs.
fn checkpoint_then_restore(
    dir: &Path,
    run_args: &[&str],
    when: &[&str],
    restore_args: &[&str],
) -> (Run, Run) {
    let snap = dir.join("app.snap");
    let first = tern(dir)
        .arg("run")
        .args(when)
        .arg("--checkpoint-out")
        .arg(&snap)
        .args(run_args)
        .run();
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(
        first.stderr.contains("checkpoint:") && snap.exists(),
        "the guest ended before its checkpoint: {first:?}"
    );
    let second = tern(dir).arg("restore").args(restore_args).arg(&snap).run();
    (first, second)
}

#[test]
fn restored_run_continues_exactly_where_it_stopped() {
    let d = scratch();
    let steps = guest("steps");
    let steps = steps.to_str().expect("utf-8 path");
    let whole = tern(d.path()).args(["run", steps, "40"]).run();
    assert_eq!(whole.code, Some(3), "{whole:?}");
    for after in ["30ms", "250ms"] {
        let (a, b) = checkpoint_then_restore(
            d.path(),
            &[steps, "40"],
            &["--checkpoint-after", after],
            &[],
        );
        assert_eq!(b.code, Some(3), "{b:?}");
        assert_eq!(
            format!("{}{}", a.stdout, b.stdout),
            whole.stdout,
            "checkpoint after {after}"
        );
    }
}

#[test]
fn snapshots_move_between_cranelift_and_pulley() {
    let d = scratch();
    let steps = guest("steps");
    let steps = steps.to_str().expect("utf-8 path");
    let args = [steps, "6", "3000000"];
    let whole = tern(d.path()).arg("run").args(args).run();
    assert_eq!(whole.code, Some(3), "{whole:?}");
    // Cranelift to Pulley, then Pulley to Cranelift.
    let (a, b) = checkpoint_then_restore(
        d.path(),
        &args,
        &["--checkpoint-at-safepoint", "5000"],
        &["--engine", "pulley"],
    );
    assert_eq!(b.code, Some(3), "{b:?}");
    assert_eq!(format!("{}{}", a.stdout, b.stdout), whole.stdout);
    let mut pulley_first = vec!["--engine", "pulley"];
    pulley_first.extend(args);
    let (a, b) = checkpoint_then_restore(
        d.path(),
        &pulley_first,
        &["--checkpoint-at-safepoint", "5000"],
        &[],
    );
    assert_eq!(b.code, Some(3), "{b:?}");
    assert_eq!(format!("{}{}", a.stdout, b.stdout), whole.stdout);
}

#[test]
fn open_files_continue_at_their_offsets_in_a_remapped_volume() {
    let d = scratch();
    let journal = guest("journal");
    let (vol, moved, reference) = (
        d.path().join("vol"),
        d.path().join("moved"),
        d.path().join("ref"),
    );
    for dir in [&vol, &moved, &reference] {
        std::fs::create_dir(dir).expect("mkdir");
    }
    let whole = tern(d.path())
        .arg("run")
        .arg(format!("--dir={}::/data", reference.display()))
        .arg(&journal)
        .args(["/data", "30", "10000000"])
        .run();
    assert_eq!(whole.code, Some(0), "{whole:?}");
    let vol_arg = format!("--dir={}::/data", vol.display());
    let journal_arg = journal.to_str().expect("utf-8 path");
    let snap = d.path().join("app.snap");
    let first = tern(d.path())
        .args(["run", "--checkpoint-after", "150ms", "--checkpoint-out"])
        .arg(&snap)
        .args([vol_arg.as_str(), journal_arg, "/data", "30", "10000000"])
        .run();
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(snap.exists(), "no checkpoint: {first:?}");
    // The volume moves to another directory, as it would to another machine.
    std::fs::copy(vol.join("journal.txt"), moved.join("journal.txt")).expect("copy");
    let second = tern(d.path())
        .arg("restore")
        .arg(format!("--dir={}::/data", moved.display()))
        .arg(&snap)
        .run();
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(format!("{}{}", first.stdout, second.stdout), whole.stdout);
    assert_eq!(
        std::fs::read(moved.join("journal.txt")).expect("journal"),
        std::fs::read(reference.join("journal.txt")).expect("reference journal"),
    );
}

/// A snapshot of the `steps` guest taken after 20 ms, in `dir`.
fn steps_snapshot(dir: &Path) -> std::path::PathBuf {
    let snap = dir.join("app.snap");
    let first = tern(dir)
        .args(["run", "--checkpoint-after", "20ms", "--checkpoint-out"])
        .arg(&snap)
        .arg(guest("steps"))
        .args(["20"])
        .run();
    assert_eq!(first.code, Some(0), "{first:?}");
    snap
}

#[test]
fn damaged_snapshots_are_refused() {
    let d = scratch();
    let snap = steps_snapshot(d.path());
    let good = std::fs::read(&snap).expect("snapshot");
    let mut cases = vec![
        ("flipped", {
            let mut b = good.clone();
            let mid = b.len() / 2;
            b[mid] ^= 1;
            b
        }),
        ("truncated", good[..good.len() - 100].to_vec()),
        ("future", {
            let mut b = good.clone();
            b[8..12].copy_from_slice(&99u32.to_le_bytes());
            b
        }),
    ];
    cases.push(("not a snapshot", b"hello".to_vec()));
    for (what, bytes) in cases {
        let bad = d.path().join("bad.snap");
        std::fs::write(&bad, bytes).expect("write");
        let out = tern(d.path()).arg("restore").arg(&bad).run();
        let needle = match what {
            "future" => "newer than this Tern reads",
            "not a snapshot" => "not a Tern snapshot",
            _ => "corrupt, nothing was restored",
        };
        out.fails_with(1, needle);
        assert!(out.stdout.is_empty(), "{what}: the guest ran: {out:?}");
    }
}

#[test]
fn a_volume_without_a_directory_is_named() {
    let d = scratch();
    let vol = d.path().join("vol");
    std::fs::create_dir(&vol).expect("mkdir");
    let snap = d.path().join("app.snap");
    let first = tern(d.path())
        .args(["run", "--checkpoint-after", "100ms", "--checkpoint-out"])
        .arg(&snap)
        .arg(format!("--dir={}::/data", vol.display()))
        .arg(guest("journal"))
        .args(["/data", "40", "10000000"])
        .run();
    assert_eq!(first.code, Some(0), "{first:?}");
    let out = tern(d.path()).arg("restore").arg(&snap).run();
    out.fails_with(1, "volume /data of the snapshot has no host directory");
}

#[test]
fn modules_with_exception_handling_are_refused() {
    let d = scratch();
    let wat = d.path().join("eh.wat");
    std::fs::write(
        &wat,
        r#"(module (memory (export "memory") 1) (tag $e)
             (func (export "_start") (throw $e)))"#,
    )
    .expect("write");
    let out = tern(d.path())
        .args(["run", "--checkpoint-after", "1s", "--checkpoint-out"])
        .arg(d.path().join("x.snap"))
        .arg(&wat)
        .run();
    out.fails_with(1, "exception handling");
}

/// Safe points at which each PolyBench kernel is stopped: the first one, and two deeper
/// in its loops (a kernel that ends sooner is compared uninterrupted).
const KERNEL_STOPS: [&str; 3] = ["1", "700", "40000"];

fn checksum(stdout: &str) -> Option<&str> {
    stdout.lines().find(|l| l.starts_with("checksum: "))
}

#[test]
fn every_polybench_kernel_restores_to_the_same_result() {
    use tern_bench::polybench::{self, Dataset};
    use tern_bench::progress::Progress;
    let d = scratch();
    let programs = polybench::build(d.path(), Dataset::Mini, &[], &Progress::new(false))
        .expect("kernels build");
    assert_eq!(programs.len(), 30);
    let snap = d.path().join("k.snap");
    let mut stopped = 0;
    for (name, p) in &programs {
        let whole = tern(d.path()).arg("run").arg(&p.wasm).run();
        let expected = checksum(whole.succeeds()).unwrap_or_else(|| panic!("{name}: {whole:?}"));
        for n in KERNEL_STOPS {
            let _ = std::fs::remove_file(&snap);
            let first = tern(d.path())
                .args(["run", "--checkpoint-at-safepoint", n, "--checkpoint-out"])
                .arg(&snap)
                .arg(&p.wasm)
                .run();
            assert_eq!(first.code, Some(0), "{name} at {n}: {first:?}");
            let got = if snap.exists() {
                stopped += 1;
                assert!(
                    checksum(&first.stdout).is_none(),
                    "{name} at {n}: {first:?}"
                );
                let second = tern(d.path()).arg("restore").arg(&snap).run();
                checksum(second.succeeds()).map(str::to_owned)
            } else {
                checksum(&first.stdout).map(str::to_owned)
            };
            assert_eq!(
                got.as_deref(),
                Some(expected),
                "{name} stopped at safe point {n}"
            );
        }
    }
    // Every kernel stops at its first safe point; most reach the deeper ones too.
    assert!(stopped >= 60, "only {stopped} checkpoints were taken");
}

#[test]
fn sigusr1_takes_the_checkpoint() {
    use std::io::{BufRead, BufReader, Read};
    let d = scratch();
    let steps = guest("steps");
    let whole = tern(d.path()).arg("run").arg(&steps).arg("40").run();
    let snap = d.path().join("sig.snap");
    let mut child = tern(d.path())
        .args(["run", "--checkpoint-out"])
        .arg(&snap)
        .arg(&steps)
        .arg("40")
        .spawn();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    for _ in 0..2 {
        out.read_line(&mut first).expect("a step");
    }
    signal(&child, "-USR1");
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("stdout");
    let status = child.wait().expect("tern ends");
    assert_eq!(status.code(), Some(0));
    assert!(snap.exists(), "no snapshot after SIGUSR1");
    let resumed = tern(d.path()).arg("restore").arg(&snap).run();
    assert_eq!(resumed.code, Some(3), "{resumed:?}");
    assert_eq!(format!("{first}{rest}{}", resumed.stdout), whole.stdout);
}

#[test]
fn keep_running_writes_a_checkpoint_and_carries_on() {
    let d = scratch();
    let steps = guest("steps");
    let whole = tern(d.path()).arg("run").arg(&steps).arg("30").run();
    let snap = d.path().join("keep.snap");
    let run = tern(d.path())
        .args([
            "run",
            "--checkpoint-after",
            "200ms",
            "--keep-running",
            "--checkpoint-out",
        ])
        .arg(&snap)
        .arg(&steps)
        .arg("30")
        .run();
    // The run itself is not disturbed.
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_eq!(run.stdout, whole.stdout);
    assert!(run.stderr.contains("checkpoint:"), "{run:?}");
    // The snapshot resumes from where it was taken: its output ends the full output.
    let resumed = tern(d.path()).arg("restore").arg(&snap).run();
    assert_eq!(resumed.code, Some(3), "{resumed:?}");
    assert!(!resumed.stdout.is_empty());
    assert!(whole.stdout.ends_with(&resumed.stdout), "{resumed:?}");
    assert!(resumed.stdout.len() < whole.stdout.len());
}

#[test]
fn a_checkpoint_with_no_room_is_skipped_and_the_guest_carries_on() {
    let d = scratch();
    let steps = guest("steps");
    let whole = tern(d.path()).arg("run").arg(&steps).arg("30").run();
    let snap = d.path().join("full.snap");
    // Room for the guest, not for the 1 MiB of unwind records a first checkpoint needs.
    let run = tern(d.path())
        .args(["run", "--max-memory", "1MiB", "--checkpoint-after", "50ms"])
        .arg("--checkpoint-out")
        .arg(&snap)
        .arg(&steps)
        .arg("30")
        .run();
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_eq!(run.stdout, whole.stdout);
    assert!(run.stderr.contains("checkpoint skipped"), "{run:?}");
    assert!(!snap.exists());
}

/// A guest asleep in a host call (a one-hour `sleep`) is woken by the checkpoint request
/// and stops at once, instead of when the sleep ends; without that, the one-minute
/// `--timeout` would end it with a timeout instead of a snapshot.
#[test]
fn a_sleeping_guest_is_checkpointed_without_waiting_for_its_sleep() {
    let d = scratch();
    let snap = d.path().join("sleepy.snap");
    let run = tern(d.path())
        .args(["run", "--timeout", "60s", "--checkpoint-after", "300ms"])
        .arg("--checkpoint-out")
        .arg(&snap)
        .arg(guest("sleepy"))
        .run();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(snap.exists(), "{run:?}");
}

/// The sleep goes on after a restore for what remained of it: a 2 s `nanosleep`
/// checkpointed after 1.2 s sleeps 2 s in all by the guest's monotonic clock (it would
/// be 3.2 s if the restored guest slept the whole 2 s again).
#[test]
fn a_restored_sleep_lasts_only_what_remained() {
    let d = scratch();
    let snap = d.path().join("naps.snap");
    let naps = guest("naps");
    let first = tern(d.path())
        .args(["run", "--checkpoint-after", "1200ms", "--checkpoint-out"])
        .arg(&snap)
        .arg(&naps)
        .arg("2000")
        .run();
    assert_eq!(first.code, Some(0), "{first:?}");
    let resumed = tern(d.path()).arg("restore").arg(&snap).run();
    assert_eq!(resumed.code, Some(0), "{resumed:?}");
    let all = format!("{}{}", first.stdout, resumed.stdout);
    let slept: u64 = all
        .strip_prefix("sleeping 2000 ms\nslept ")
        .and_then(|r| r.strip_suffix(" ms\n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{first:?} {resumed:?}"));
    assert!(
        (2000..3000).contains(&slept),
        "slept {slept} ms: {resumed:?}"
    );
}

/// A snapshot whose saved stack was made under another migratable rewrite of the module
/// (another Tern version) is refused by name, and nothing runs: its call-site indices
/// would resume in the wrong places.
#[test]
fn a_snapshot_from_another_rewrite_is_refused() {
    let d = scratch();
    let snap = steps_snapshot(d.path());
    let bytes = std::fs::read(&snap).expect("snapshot");
    let mut s = tern_snapshot::Snapshot::decode(&bytes).expect("decodes");
    s.meta.rewrite_digest = "0".repeat(64);
    std::fs::write(&snap, s.encode().expect("encodes")).expect("write");
    let out = tern(d.path()).arg("restore").arg(&snap).run();
    out.fails_with(1, "migratable rewrite of the module (000000000000) differs");
    assert!(out.stdout.is_empty(), "the guest ran: {out:?}");
}

/// Input of `stdin_upper`: numbered lines, far more than its libc reads at once.
fn lines(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("line {i:05} of the input\n").into_bytes())
        .collect()
}

/// The bytes of stdin the restore said the guest had read.
fn consumed(restore: &Run) -> usize {
    let line = restore
        .stderr
        .lines()
        .find(|l| l.starts_with("restore: the guest had read"))
        .unwrap_or_else(|| panic!("no stdin line in {:?}", restore.stderr));
    line.split_whitespace()
        .nth(5)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line:?}"))
}

/// A guest checkpointed while it reads stdin, restored with the same input on stdin,
/// reads each byte once: the bytes its libc had buffered are in the snapshot and the
/// restore skips what the guest had consumed. `--stdin-from-start` gives it all again.
#[test]
fn restore_continues_stdin_where_the_guest_stopped() {
    let d = scratch();
    let snap = d.path().join("app.snap");
    let upper = guest("stdin_upper");
    let input = lines(8000);
    let want = input.to_ascii_uppercase();
    let first = tern(d.path())
        .args([
            "run",
            "--checkpoint-at-safepoint",
            "50000",
            "--checkpoint-out",
        ])
        .arg(&snap)
        .arg(&upper)
        .stdin(&input)
        .run();
    assert!(first.stderr.contains("checkpoint:"), "{first:?}");
    let second = tern(d.path()).arg("restore").arg(&snap).stdin(&input).run();
    assert_eq!(second.code, Some(0), "{second:?}");
    let n = consumed(&second);
    assert!(n > 0 && n < input.len(), "consumed {n}");
    assert!(second.stderr.contains("skipping as many"), "{second:?}");
    let whole = format!("{}{}", first.stdout, second.stdout);
    assert_eq!(whole.len(), want.len(), "every byte is read exactly once");
    assert_eq!(whole.as_bytes(), want.as_slice());
    assert!(
        second.stderr.ends_with(&format!("{} bytes\n", input.len())),
        "{second:?}"
    );

    let replay = tern(d.path())
        .args(["restore", "--stdin-from-start"])
        .arg(&snap)
        .stdin(&input)
        .run();
    assert_eq!(replay.code, Some(0), "{replay:?}");
    assert!(replay.stderr.contains("from its start"), "{replay:?}");
    // What it had buffered but not printed, then the whole input again.
    let printed = first.stdout.len();
    let mut expect = want[printed..n].to_vec();
    expect.extend_from_slice(&want);
    assert_eq!(replay.stdout.as_bytes(), expect.as_slice());
}

/// Input shorter than what the guest had read: the restore says so and the guest reads
/// end-of-file, as it would have.
#[test]
fn restore_with_less_stdin_than_was_read_says_so() {
    let d = scratch();
    let snap = d.path().join("app.snap");
    let input = lines(8000);
    let first = tern(d.path())
        .args([
            "run",
            "--checkpoint-at-safepoint",
            "50000",
            "--checkpoint-out",
        ])
        .arg(&snap)
        .arg(guest("stdin_upper"))
        .stdin(&input)
        .run();
    assert!(first.stderr.contains("checkpoint:"), "{first:?}");
    let second = tern(d.path())
        .arg("restore")
        .arg(&snap)
        .stdin(&input[..100])
        .run();
    assert_eq!(second.code, Some(0), "{second:?}");
    assert!(
        second.stderr.contains("stdin ended after 100 of the"),
        "{second:?}"
    );
}

/// Checkpoints the `journal` guest 150 ms in, its `/data` volume in `vol` and `extra`
/// flags given; returns the run and the snapshot's path.
fn journal_checkpoint(dir: &Path, vol: &Path, extra: &[String]) -> (Run, std::path::PathBuf) {
    let snap = dir.join("app.snap");
    let first = tern(dir)
        .args(["run", "--checkpoint-after", "150ms", "--checkpoint-out"])
        .arg(&snap)
        .arg(format!("--dir={}::/data", vol.display()))
        .args(extra)
        .arg(guest("journal"))
        .args(["/data", "30", "10000000"])
        .run();
    assert_eq!(first.code, Some(0), "{first:?}");
    (first, snap)
}

/// A restore onto a volume whose files are no longer what the guest left (a database
/// that moved on after the checkpoint) is refused, naming the file, and changes nothing;
/// `--force` restores anyway after listing the differences.
#[test]
fn restore_refuses_a_volume_that_moved_on() {
    let d = scratch();
    let vol = d.path().join("vol");
    std::fs::create_dir(&vol).expect("mkdir");
    let (_, snap) = journal_checkpoint(d.path(), &vol, &[]);
    let journal = vol.join("journal.txt");
    let left = std::fs::read(&journal).expect("journal");
    // The directory moves on after the checkpoint.
    let mut moved_on = left.clone();
    moved_on.extend_from_slice(b"a record written after the checkpoint\n");
    std::fs::write(&journal, &moved_on).expect("write");
    let dir_arg = format!("--dir={}::/data", vol.display());
    let refused = tern(d.path()).args(["restore", &dir_arg]).arg(&snap).run();
    refused.fails_with(
        1,
        &format!(
            "journal.txt in volume /data is {} bytes where the guest left {}",
            moved_on.len(),
            left.len()
        ),
    );
    assert!(refused.stderr.contains("--force"), "{refused:?}");
    assert_eq!(refused.stdout, "", "nothing ran");
    assert_eq!(std::fs::read(&journal).expect("journal"), moved_on);

    std::fs::remove_file(&journal).expect("rm");
    let refused = tern(d.path()).args(["restore", &dir_arg]).arg(&snap).run();
    refused.fails_with(1, "journal.txt in volume /data is missing");
    // Forced, the restore cannot reopen the file the guest had open, and says why in
    // words.
    let forced = tern(d.path())
        .args(["restore", "--force", &dir_arg])
        .arg(&snap)
        .run();
    assert_eq!(forced.code, Some(1), "{forced:?}");
    assert!(
        forced.stderr.contains(
            "cannot reopen journal.txt in volume /data after restore: No such file or directory (WASI errno 44)"
        ),
        "{forced:?}"
    );

    std::fs::write(&journal, &moved_on).expect("write");
    let forced = tern(d.path())
        .args(["restore", "--force", &dir_arg])
        .arg(&snap)
        .run();
    // The guest runs, and here finds the record it did not write.
    assert!(forced.stdout.contains("mismatch at"), "{forced:?}");
    assert!(
        forced
            .stderr
            .starts_with("warning: journal.txt in volume /data is"),
        "{forced:?}"
    );

    // Put back as the guest left it, the volume restores without a word.
    std::fs::write(&journal, &left).expect("write");
    let ok = tern(d.path()).args(["restore", &dir_arg]).arg(&snap).run();
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert!(
        !ok.stderr.contains("warning"),
        "the same contents pass: {ok:?}"
    );
}

/// The checkpoint's hint is the whole restore command, volumes included.
#[test]
fn the_resume_hint_names_the_volumes() {
    let d = scratch();
    let (vol, ro) = (d.path().join("vol"), d.path().join("ro dir"));
    std::fs::create_dir(&vol).expect("mkdir");
    std::fs::create_dir(&ro).expect("mkdir");
    let (first, snap) =
        journal_checkpoint(d.path(), &vol, &[format!("--ro-dir={}::/ro", ro.display())]);
    let hint = format!(
        "resume with `tern restore --dir {}::/data --ro-dir '{}::/ro' {}`",
        vol.display(),
        ro.display(),
        snap.display()
    );
    assert!(first.stderr.contains(&hint), "{hint}\n{}", first.stderr);
}

/// Waits until `file` exists, which the guest makes first: the guest is running.
fn wait_for(file: &Path) {
    for _ in 0..500 {
        if file.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} never appeared", file.display());
}

/// With --checkpoint-out, SIGTERM and SIGINT take a checkpoint at the next safe point
/// and stop with the signal's status, even with --keep-running; the snapshot resumes to
/// the same end as an uninterrupted run.
#[test]
fn sigterm_and_sigint_checkpoint_then_stop() {
    let d = scratch();
    let journal = guest("journal");
    let reference = d.path().join("ref");
    std::fs::create_dir(&reference).expect("mkdir");
    let whole = tern(d.path())
        .arg("run")
        .arg(format!("--dir={}::/data", reference.display()))
        .arg(&journal)
        .args(["/data", "30", "10000000"])
        .run();
    assert_eq!(whole.code, Some(0), "{whole:?}");
    for (sig, extra, status) in [("-TERM", None, 143), ("-INT", Some("--keep-running"), 130)] {
        let vol = d.path().join(format!("vol{sig}"));
        std::fs::create_dir(&vol).expect("mkdir");
        let snap = d.path().join(format!("app{sig}.snap"));
        let dir_arg = format!("--dir={}::/data", vol.display());
        let mut args: Vec<&std::ffi::OsStr> = vec!["run".as_ref(), "--checkpoint-out".as_ref()];
        args.push(snap.as_os_str());
        args.extend(extra.map(std::ffi::OsStr::new));
        args.extend([dir_arg.as_ref(), journal.as_os_str()]);
        args.extend(["/data", "30", "10000000"].map(std::ffi::OsStr::new));
        let child = tern(d.path()).args(&args).spawn();
        wait_for(&vol.join("journal.txt"));
        signal(&child, sig);
        let first = Run::from(child.wait_with_output().expect("tern ends"));
        assert_eq!(first.code, Some(status), "{sig}: {first:?}");
        assert!(
            first
                .stderr
                .contains("checkpointing at the next safe point"),
            "{first:?}"
        );
        assert!(first.stderr.contains("checkpoint:"), "{sig}: {first:?}");
        let second = tern(d.path()).args(["restore", &dir_arg]).arg(&snap).run();
        assert_eq!(second.code, Some(0), "{sig}: {second:?}");
        assert_eq!(
            format!("{}{}", first.stdout, second.stdout),
            whole.stdout,
            "{sig}"
        );
    }
}

/// A guest blocked where no safe point comes (reading a stdin nobody writes) is
/// stopped at once by a second SIGTERM, as the signal would.
#[test]
fn a_second_sigterm_stops_at_once() {
    use std::io::BufRead as _;
    let d = scratch();
    let snap = d.path().join("app.snap");
    let waits = guest("waits");
    let mut child = tern(d.path())
        .arg("run")
        .arg("--checkpoint-out")
        .arg(&snap)
        .arg(&waits)
        .spawn();
    let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line).expect("first line");
    assert_eq!(line, "waiting for input\n");
    // The guest says it waits just before its read: a signal before the read is taken
    // at the safe point on the way in, so wait until the guest's thread is in it.
    wait_in_read(child.id());
    // The guest is in its read: the first signal cannot stop it there, the second
    // ends the process.
    signal(&child, "-TERM");
    line.clear();
    err.read_line(&mut line).expect("second line");
    assert!(
        line.contains("checkpointing at the next safe point"),
        "{line}"
    );
    signal(&child, "-TERM");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).expect("rest of stderr");
    let out = child.wait_with_output().expect("tern ends");
    assert_eq!(out.status.code(), Some(143), "{out:?}");
    assert!(
        rest.contains("SIGTERM again: stopping without a checkpoint"),
        "{rest}"
    );
    assert!(!snap.exists());
}

/// Waits until a `guest` thread of process `pid` is blocked in `read(2)` (as
/// `/proc/PID/task/TID/syscall` shows), up to a minute.
fn wait_in_read(pid: u32) {
    // read(2)'s number: x86_64 0, aarch64 63.
    let read = if cfg!(target_arch = "aarch64") {
        "63"
    } else {
        "0"
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
        for task in tasks.flatten() {
            let at = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
            if at("comm").trim() == "guest" && at("syscall").split(' ').next() == Some(read) {
                return;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the guest was not in its read within a minute");
}

/// How the volumes are mapped is checked before anything else: a volume without a
/// directory, or mapped read-only where the guest writes, is refused in one line; a
/// directory for a volume the snapshot lacks is a note.
#[test]
fn restore_checks_how_volumes_are_mapped() {
    let d = scratch();
    let (vol, other) = (d.path().join("vol"), d.path().join("other"));
    std::fs::create_dir(&vol).expect("mkdir");
    std::fs::create_dir(&other).expect("mkdir");
    let (_, snap) = journal_checkpoint(d.path(), &vol, &[]);
    let restore = |args: &[String]| tern(d.path()).arg("restore").args(args).arg(&snap).run();
    restore(&[]).fails_with(
        1,
        "volume /data of the snapshot has no host directory; pass --dir HOST::/data",
    );
    restore(&[format!("--ro-dir={}::/data", vol.display())]).fails_with(
        1,
        "the guest has journal.txt in volume /data open for writing; map it with --dir, not --ro-dir",
    );
    let ok = restore(&[
        format!("--dir={}::/data", vol.display()),
        format!("--dir={}::/other", other.display()),
    ]);
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert!(
        ok.stderr.starts_with(
            "note: /other is not a volume of this snapshot (its volumes: /data); its directory is not used"
        ),
        "{ok:?}"
    );
}
