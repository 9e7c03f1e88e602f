//! A failed migration says what failed and with which peer, as data: each test puts a
//! destination that misbehaves in one way on a real socket, migrates a real guest to it,
//! and matches the failure the source reports. The guest resumes at the source and runs
//! to its end every time.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use tern_runtime::{Engine, EngineOptions, Limits, Outcome, Policy};
use tern_snapshot::{
    Migratable, MigrateEnd, MigrationError, MigrationFailure, Rewriter, SnapshotError,
};

/// Counts to 300 million in a loop with a safe point at its header, then exits 0.
const GUEST: &str = r#"(module
  (memory (export "memory") 2)
  (func (export "_start") (local $i i32)
    (loop $count
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $count (i32.lt_u (local.get $i) (i32.const 300000000))))))"#;

/// Migrates the guest to `addr` at once; returns the failure the source reports.
fn migrate_to(addr: &str) -> MigrationError {
    match migrate_wat_to(GUEST, addr) {
        Err(e) => e,
        Ok(()) => panic!("expected a failed migration"),
    }
}

/// Migrates the guest `wat` to `addr` at once: `Ok` when it moved, or the failure the
/// source reports (the guest then ran to its end here).
fn migrate_wat_to(wat: &str, addr: &str) -> Result<(), MigrationError> {
    let engine = Engine::new(EngineOptions::default()).expect("engine");
    let wasm = wat::parse_str(wat).expect("wat");
    let migratable = Migratable::new(&engine, &Rewriter::new(None), &wasm).expect("migratable");
    let end = tern_snapshot::migrate_run(
        &migratable,
        &Policy::default(),
        &Limits::default(),
        addr,
        Duration::ZERO,
        |_| {},
    )
    .expect("the guest runs");
    match end {
        MigrateEnd::Migrated(_) => Ok(()),
        MigrateEnd::Finished {
            outcome: Outcome::Exited(0),
            failure: Some(SnapshotError::Migration(e)),
        } => Err(e),
        other => {
            panic!("expected a migration, or a failed one and a guest run to its end: {other:?}")
        }
    }
}

/// A destination on a real socket that reads the source's magic and hello frame, then
/// does `then` with the connection.
fn destination(then: impl FnOnce(&mut TcpStream) + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut magic = [0u8; 8];
        s.read_exact(&mut magic).expect("magic");
        assert_eq!(&magic, b"TERNMIG\x02");
        read_frame(&mut s);
        then(&mut s);
    });
    addr
}

fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).expect("frame head");
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let mut body = vec![0u8; len - 1];
    s.read_exact(&mut body).expect("frame body");
    (head[4], body)
}

fn write_frame(s: &mut TcpStream, tag: u8, payload: &[u8]) {
    let len = (payload.len() as u32 + 1).to_le_bytes();
    s.write_all(&len).expect("len");
    s.write_all(&[tag]).expect("tag");
    s.write_all(payload).expect("payload");
}

/// Reads what the source still sends until it hangs up, so that it reads our answer
/// rather than failing to write.
fn drain(s: &mut TcpStream) {
    let _ = std::io::copy(s, &mut std::io::sink());
}

#[test]
fn an_unreachable_destination_is_a_connect_failure_naming_it() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let e = migrate_to(&addr);
    assert!(matches!(e.failure, MigrationFailure::Connect { .. }), "{e}");
    assert_eq!(e.peer.as_deref(), Some(addr.as_str()));
    assert!(e.to_string().contains("cannot connect to"), "{e}");
}

/// Migrates the guest to a destination that answers its hello with `answers` (frames
/// of tag and payload) and then reads on; checks that the source reports `expected`,
/// naming that destination, and returns the error's text.
fn fails_with(answers: &'static [(u8, &'static [u8])], expected: MigrationFailure) -> String {
    let addr = destination(move |s| {
        for (tag, payload) in answers {
            write_frame(s, *tag, payload);
        }
        drain(s);
    });
    let e = migrate_to(&addr);
    assert_eq!(e.failure, expected, "{e}");
    assert_eq!(e.peer.as_deref(), Some(addr.as_str()));
    e.to_string().replace(&addr, "ADDR")
}

#[test]
fn a_refusal_carries_the_destination_reason() {
    let reason = "no room for 2 pages".to_string();
    let text = fails_with(
        &[(b'E', b"no room for 2 pages")],
        MigrationFailure::Refused { reason },
    );
    assert_eq!(
        text,
        "the destination refused: no room for 2 pages (peer ADDR)"
    );
}

#[test]
fn a_failure_after_accepting_is_told_apart_from_a_refusal() {
    let reason = "disk full".to_string();
    let failure = MigrationFailure::FailedAfterAccept { reason };
    fails_with(&[(b'A', b"[]"), (b'E', b"disk full")], failure);
}

#[test]
fn an_answer_the_protocol_does_not_allow_is_a_protocol_violation() {
    let reason = "unexpected reply 'Q'".to_string();
    fails_with(&[(b'Q', b"?")], MigrationFailure::Protocol { reason });
}

#[test]
fn a_destination_that_hangs_up_is_a_lost_connection() {
    let addr = destination(|s| {
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    let e = migrate_to(&addr);
    assert!(matches!(e.failure, MigrationFailure::Lost { .. }), "{e}");
    assert!(e.to_string().contains("closed the connection"), "{e}");
    assert_eq!(e.peer.as_deref(), Some(addr.as_str()));
}

/// A receiver waiting for one app's migration refuses a peer that brings another
/// module (anyone who reaches its port could otherwise run their own code as the app):
/// the peer is told why, its guest runs on where it was, and the receiver listens on
/// and takes the app's own migration.
#[test]
fn a_peer_bringing_another_module_is_refused_and_the_receiver_listens_on() {
    let engine = Engine::new(EngineOptions::default()).expect("engine");
    let app = tern_runtime::digest(&wat::parse_str(GUEST).expect("wat"));
    let forged = GUEST.replace("300000000", "300000001");
    let other = tern_runtime::digest(&wat::parse_str(&forged).expect("wat"));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let receiver = {
        let (app, lines) = (app.clone(), lines.clone());
        std::thread::spawn(move || {
            tern_snapshot::receive_with(
                listener,
                &engine,
                &Rewriter::new(None),
                Some(&app),
                &[],
                &Limits::default(),
                |line| lines.lock().expect("lines").push(line.to_owned()),
                &tern_snapshot::Trigger::new(),
                |_| |_: tern_snapshot::Captured<'_>| tern_snapshot::Checkpoint::Continue,
                || {},
            )
        })
    };
    let refused = migrate_wat_to(&forged, &addr).expect_err("refused");
    let reason =
        format!("the migration brings module sha256:{other}, not the app's sha256:{app}: refused");
    assert_eq!(
        refused.failure,
        MigrationFailure::Refused {
            reason: reason.clone()
        }
    );
    migrate_wat_to(GUEST, &addr).expect("the app's own migration is taken");
    let end = receiver.join().expect("receiver").expect("received");
    assert!(
        matches!(end, tern_snapshot::RunEnd::Finished(Outcome::Exited(0))),
        "{end:?}"
    );
    let lines = lines.lock().expect("lines");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&reason) && l.ends_with("still listening")),
        "{lines:?}"
    );
}
