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
    let engine = Engine::new(EngineOptions::default()).expect("engine");
    let wasm = wat::parse_str(GUEST).expect("wat");
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
        MigrateEnd::Finished {
            outcome: Outcome::Exited(0),
            failure: Some(SnapshotError::Migration(e)),
        } => e,
        other => panic!("expected a failed migration and a guest run to its end: {other:?}"),
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
