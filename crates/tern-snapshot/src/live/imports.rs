//! The host side of a migratable module's `tern.*` imports: `tern.safepoint` (start an
//! unwind when a checkpoint is asked for, end a rewind after a restore), `tern.sleep`
//! (a sleep that a checkpoint request cuts short), and the `tern.note_*` calls that keep
//! the table of files the guest has open and the set of files it changed.

use super::*;

/// Defines the `tern.*` imports of a migratable module.
pub(super) fn add_host_imports(linker: &mut wasmtime::Linker<Host>) -> wasmtime::Result<()> {
    linker.func_wrap(SAFEPOINT.0, SAFEPOINT.1, safepoint)?;
    linker.func_wrap("tern", SLEEP, sleep)?;
    linker.func_wrap(
        "tern",
        "note_path_open",
        |mut caller: Caller<'_, Host>,
         dir: i32,
         lookup: i32,
         path: i32,
         len: i32,
         oflags: i32,
         base: i64,
         inheriting: i64,
         fdflags: i32,
         fd_out: i32,
         errno: i32| {
            if errno != 0 {
                return;
            }
            let Some(memory) = caller_ext(&mut caller).memory else {
                return;
            };
            let data = memory.data(&caller);
            let (path, len, fd_out) = (
                path as u32 as usize,
                len as u32 as usize,
                fd_out as u32 as usize,
            );
            let (Some(name), Some(fd)) = (data.get(path..path + len), data.get(fd_out..fd_out + 4))
            else {
                return;
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let fd = u32::from_le_bytes([fd[0], fd[1], fd[2], fd[3]]);
            let e = caller_ext(&mut caller);
            let Some((volume, path)) = e.locate(dir as u32, name) else {
                // Opened under a descriptor Tern does not know: it cannot be reopened,
                // and a checkpoint will say so if it is still open.
                e.files.remove(&fd);
                return;
            };
            // Files it changes, and every file it opens in a read-only volume: a
            // migration checks those against the destination's copies.
            let read_only = e.volumes.values().any(|v| v.guest == volume && v.read_only);
            if read_only
                || base as u64 & WRITE_RIGHTS != 0
                || oflags as u32 & OFLAGS_CREAT_TRUNC != 0
            {
                e.note_changed((volume.clone(), path.clone()));
            }
            e.files.insert(
                fd,
                OpenFile {
                    fd,
                    volume,
                    path,
                    lookup_flags: lookup as u32,
                    oflags: oflags as u32,
                    rights_base: base as u64,
                    rights_inheriting: inheriting as u64,
                    fd_flags: fdflags as u32,
                    offset: 0,
                },
            );
        },
    )?;
    linker.func_wrap(
        "tern",
        "note_path_rename",
        |mut caller: Caller<'_, Host>,
         old_dir: i32,
         old: i32,
         old_len: i32,
         new_dir: i32,
         new: i32,
         new_len: i32,
         errno: i32| {
            note_paths(
                &mut caller,
                errno,
                &[(old_dir, old, old_len), (new_dir, new, new_len)],
            );
        },
    )?;
    linker.func_wrap(
        "tern",
        "note_path_unlink_file",
        |mut caller: Caller<'_, Host>, dir: i32, path: i32, len: i32, errno: i32| {
            note_paths(&mut caller, errno, &[(dir, path, len)]);
        },
    )?;
    linker.func_wrap(
        "tern",
        "note_fd_close",
        |mut caller: Caller<'_, Host>, fd: i32, errno: i32| {
            if errno == 0 {
                caller_ext(&mut caller).files.remove(&(fd as u32));
            }
        },
    )?;
    linker.func_wrap(
        "tern",
        "note_fd_renumber",
        |mut caller: Caller<'_, Host>, from: i32, to: i32, errno: i32| {
            if errno == 0 {
                let e = caller_ext(&mut caller);
                e.files.remove(&(to as u32));
                if let Some(mut f) = e.files.remove(&(from as u32)) {
                    f.fd = to as u32;
                    e.files.insert(to as u32, f);
                }
            }
        },
    )?;
    Ok(())
}

/// Records the paths (directory descriptor, guest pointer, length) a successful call
/// changed.
fn note_paths(caller: &mut Caller<'_, Host>, errno: i32, paths: &[(i32, i32, i32)]) {
    if errno != 0 {
        return;
    }
    let Some(memory) = caller_ext(caller).memory else {
        return;
    };
    let names: Vec<(u32, String)> = {
        let data = memory.data(&*caller);
        paths
            .iter()
            .filter_map(|&(dir, ptr, len)| {
                let at = ptr as u32 as usize;
                let bytes = data.get(at..at.checked_add(len as u32 as usize)?)?;
                Some((dir as u32, String::from_utf8_lossy(bytes).into_owned()))
            })
            .collect()
    };
    let e = caller_ext(caller);
    for (dir, name) in names {
        if let Some(file) = e.locate(dir, name) {
            e.note_changed(file);
        }
    }
}

/// Size of a WASI preview 1 `subscription`, and offsets of its fields: the tag byte of
/// its union (0 for a clock), and the clock's timeout (ns) and flags.
const SUBSCRIPTION: usize = 48;
const SUB_TAG: usize = 8;
const SUB_TIMEOUT: usize = 24;
const SUB_FLAGS: usize = 40;
/// `subclockflags::subscription_clock_abstime`.
const ABSTIME: u16 = 1;
/// How often a sleeping guest looks for a checkpoint request.
const SLEEP_SLICE: Duration = Duration::from_millis(5);

/// `tern.sleep(subscriptions, count) -> interrupted`, called by the `poll_oneoff` wrapper
/// before the real call. When every subscription is a relative clock timeout (what
/// `sleep` and `nanosleep` make), it sleeps until the first is due, in slices, watching
/// for a checkpoint request. Either way it shortens each timeout in guest memory by the
/// time slept, so the real `poll_oneoff` (or the one after a restore) waits only for
/// what remains; it returns 1 when a request cut the sleep short, so the wrapper goes
/// back to its safe point. Subscriptions on descriptors or absolute times are left to
/// `poll_oneoff` as they are (0 at once).
fn sleep(mut caller: Caller<'_, Host>, subscriptions: i32, count: i32) -> i32 {
    let e = caller_ext(&mut caller);
    let (Some(memory), requested) = (e.memory, e.trigger.requested.clone()) else {
        return 0;
    };
    let base = subscriptions as u32 as usize;
    let count = count as u32 as usize;
    let mut timeouts = Vec::with_capacity(count.min(64));
    {
        let data = memory.data(&caller);
        for i in 0..count {
            let Some(sub) = data.get(base + i * SUBSCRIPTION..base + (i + 1) * SUBSCRIPTION) else {
                return 0;
            };
            let flags = u16::from_le_bytes([sub[SUB_FLAGS], sub[SUB_FLAGS + 1]]);
            if sub[SUB_TAG] != 0 || flags & ABSTIME != 0 {
                return 0;
            }
            let mut t = [0u8; 8];
            t.copy_from_slice(&sub[SUB_TIMEOUT..SUB_TIMEOUT + 8]);
            timeouts.push(u64::from_le_bytes(t));
        }
    }
    let Some(first) = timeouts.iter().copied().min() else {
        return 0;
    };
    let started = Instant::now();
    let due = started + Duration::from_nanos(first);
    let interrupted = loop {
        if requested.load(Ordering::SeqCst) {
            break 1;
        }
        let now = Instant::now();
        if now >= due {
            break 0;
        }
        std::thread::sleep(SLEEP_SLICE.min(due - now));
    };
    let slept = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let data = memory.data_mut(&mut caller);
    for (i, t) in timeouts.iter().enumerate() {
        let at = base + i * SUBSCRIPTION + SUB_TIMEOUT;
        data[at..at + 8].copy_from_slice(&t.saturating_sub(slept).to_le_bytes());
    }
    interrupted
}

/// `tern.safepoint`: ends a rewind, or starts an unwind when a checkpoint is wanted.
fn safepoint(mut caller: Caller<'_, Host>) -> wasmtime::Result<()> {
    let e = caller_ext(&mut caller);
    let (Some(a), Some(memory)) = (e.asyncify.clone(), e.memory) else {
        return Ok(());
    };
    let requested = e.trigger.requested.clone();
    let countdown = e.trigger.countdown.clone();
    if a.get_state.call(&mut caller, ())? == ASYNCIFY_REWINDING {
        return a.stop_rewind.call(&mut caller, ());
    }
    let counting = countdown.load(Ordering::SeqCst) > 0;
    let count_reached = counting && countdown.fetch_sub(1, Ordering::SeqCst) == 1;
    // Lower the flag before looking at the request: a request that comes in between
    // raises it again and is seen at the next poll. A counting trigger keeps it raised.
    if (!counting || count_reached)
        && let Some(b) = memory
            .data_mut(&mut caller)
            .get_mut(POLL_FLAG_ADDR as usize)
    {
        *b = 0;
    }
    if count_reached {
        requested.store(true, Ordering::SeqCst);
    }
    if !requested.swap(false, Ordering::SeqCst) {
        return Ok(());
    }
    caller_ext(&mut caller).trigger.reached();
    let Some(unwind) = caller_ext(&mut caller).unwind else {
        return Ok(());
    };
    // No room for the unwind records (the memory limit): the checkpoint is skipped with a
    // warning and the guest carries on; it is never lost.
    if let Err(reason) = grow_unwind(&unwind, &mut caller) {
        tracing::warn!(%reason, "checkpoint skipped: the guest carries on");
        return Ok(());
    }
    unwind_header(&unwind, &mut caller, 0).map_err(wasmtime::Error::msg)?;
    caller_ext(&mut caller).unwinding = true;
    a.start_unwind.call(&mut caller, 0)
}
