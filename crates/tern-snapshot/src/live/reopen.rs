//! Loading a snapshot's state into a prepared instance: its globals, its unwind records,
//! and its open files, reopened at the same descriptors and offsets.

use super::*;

/// Writes globals, unwind records and open files of `meta` into a prepared
/// instance whose memory holds the snapshot's pages.
pub(super) fn load_state(
    session: &mut Session,
    memory: Memory,
    meta: &Meta,
) -> Result<(), SnapshotError> {
    let foreign = |reason: String| SnapshotError::Foreign { reason };
    for (index, value) in &meta.globals {
        let name = format!("{GLOBAL_EXPORT_PREFIX}{index}");
        let g = session
            .instance
            .get_global(&mut session.store, &name)
            .ok_or_else(|| foreign(format!("the module has no mutable global {index}")))?;
        let v = match *value {
            GlobalValue::I32(v) => Val::I32(v as i32),
            GlobalValue::I64(v) => Val::I64(v as i64),
            GlobalValue::F32(v) => Val::F32(v),
            GlobalValue::F64(v) => Val::F64(v),
            GlobalValue::V128(v) => Val::V128(v.into()),
        };
        g.set(&mut session.store, v)
            .map_err(|e| foreign(format!("global {index}: {e:#}")))?;
    }
    // A stopped guest has at least its outermost frame's record, its call site's index.
    if meta.unwind.len() < 4 {
        return Err(SnapshotError::Corrupt {
            reason: "it holds no unwind records".into(),
        });
    }
    let unwind = ext(&mut session.store)
        .unwind
        .ok_or_else(|| capture_err("the rewritten module has no unwind memory".into()))?;
    grow_unwind(&unwind, &mut session.store).map_err(|reason| SnapshotError::Foreign {
        reason: format!("cannot restore its call stack: {reason}"),
    })?;
    unwind_header(&unwind, &mut session.store, meta.unwind.len())?;
    unwind
        .write(&mut session.store, UNWIND_HEADER, &meta.unwind)
        .map_err(|e| capture_err(format!("{e}")))?;
    if meta.wasi.files.is_empty() {
        return Ok(());
    }
    with_scratch(session, memory, |session, scratch| {
        reopen_files(session, memory, meta, scratch)
    })
}

/// Opens each file of the snapshot again under its volume, at its descriptor number and
/// offset. Descriptors are handed out lowest-free first, so gaps below a file's number
/// are filled with placeholders that are closed afterwards.
/// `scratch` is [`SCRATCH`] bytes of the guest's memory lent for the calls' buffers.
fn reopen_files(
    session: &mut Session,
    memory: Memory,
    meta: &Meta,
    scratch: u32,
) -> Result<(), SnapshotError> {
    let out_ptr = scratch;
    let path_ptr = scratch + 16;
    let s = &mut session.store;
    let i = &session.instance;
    let func_err = |e: wasmtime::Error| SnapshotError::Foreign {
        reason: format!("{e:#}"),
    };
    let open = i
        .get_typed_func::<(i32, i32, i32, i32, i32, i64, i64, i32, i32), i32>(
            &mut *s,
            "tern:path_open",
        )
        .map_err(func_err)?;
    let seek = i
        .get_typed_func::<(i32, i64, i32, i32), i32>(&mut *s, "tern:fd_seek")
        .map_err(func_err)?;
    let close = i
        .get_typed_func::<i32, i32>(&mut *s, "tern:fd_close")
        .map_err(func_err)?;
    let mut files = meta.wasi.files.clone();
    files.sort_by_key(|f| f.fd);
    let mut placeholders = Vec::new();
    for f in &files {
        let volume_fd = meta
            .wasi
            .volumes
            .iter()
            .find(|v| v.guest == f.volume)
            .map(|v| v.fd)
            .ok_or_else(|| SnapshotError::Corrupt {
                reason: format!("file {} names an unknown volume {}", f.path, f.volume),
            })?;
        if f.path.len() as u32 > SCRATCH - 16 {
            return Err(SnapshotError::Corrupt {
                reason: format!("path of descriptor {} is too long", f.fd),
            });
        }
        let reopen_err = |errno: i32| SnapshotError::Reopen {
            volume: f.volume.clone(),
            path: f.path.clone(),
            errno,
        };
        loop {
            memory
                .write(&mut *s, path_ptr as usize, f.path.as_bytes())
                .map_err(|e| capture_err(format!("{e}")))?;
            let errno = open
                .call(
                    &mut *s,
                    (
                        volume_fd as i32,
                        f.lookup_flags as i32,
                        path_ptr as i32,
                        f.path.len() as i32,
                        (f.oflags & !OFLAGS_CREAT_EXCL_TRUNC) as i32,
                        f.rights_base as i64,
                        f.rights_inheriting as i64,
                        f.fd_flags as i32,
                        out_ptr as i32,
                    ),
                )
                .map_err(|e| capture_err(format!("path_open: {e:#}")))?;
            if errno != 0 {
                return Err(reopen_err(errno));
            }
            let mut b = [0u8; 4];
            memory
                .read(&*s, out_ptr as usize, &mut b)
                .map_err(|e| capture_err(format!("{e}")))?;
            let got = u32::from_le_bytes(b);
            if got == f.fd {
                break;
            }
            if got > f.fd || placeholders.len() > 1 << 16 {
                return Err(reopen_err(8 /* badf */));
            }
            placeholders.push(got);
        }
        if f.offset > 0 {
            let errno = seek
                .call(&mut *s, (f.fd as i32, f.offset as i64, 0, out_ptr as i32))
                .map_err(|e| capture_err(format!("fd_seek: {e:#}")))?;
            if errno != 0 {
                return Err(reopen_err(errno));
            }
        }
    }
    for p in placeholders {
        close
            .call(&mut *s, p as i32)
            .map_err(|e| capture_err(format!("fd_close: {e:#}")))?;
    }
    let e = ext(s);
    for f in files {
        e.files.insert(f.fd, f);
    }
    Ok(())
}
