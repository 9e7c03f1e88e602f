//! What a WASI preview 1 errno means, in the words `strerror` uses, for messages that
//! would otherwise print a bare number.

/// The description of WASI errno `errno` (`44` → "No such file or directory").
pub fn wasi_errno_text(errno: i32) -> &'static str {
    const TEXTS: [&str; 77] = [
        "Success",
        "Argument list too long",
        "Permission denied",
        "Address in use",
        "Address not available",
        "Address family not supported",
        "Resource temporarily unavailable",
        "Operation already in progress",
        "Bad file descriptor",
        "Bad message",
        "Device or resource busy",
        "Operation canceled",
        "No child process",
        "Connection aborted",
        "Connection refused",
        "Connection reset by peer",
        "Resource deadlock would occur",
        "Destination address required",
        "Domain error",
        "Quota exceeded",
        "File exists",
        "Bad address",
        "File too large",
        "Host is unreachable",
        "Identifier removed",
        "Illegal byte sequence",
        "Operation in progress",
        "Interrupted system call",
        "Invalid argument",
        "I/O error",
        "Socket is connected",
        "Is a directory",
        "Symbolic link loop",
        "No file descriptors available",
        "Too many links",
        "Message too large",
        "Multihop attempted",
        "Filename too long",
        "Network is down",
        "Connection reset by network",
        "Network unreachable",
        "Too many open files in system",
        "No buffer space available",
        "No such device",
        "No such file or directory",
        "Exec format error",
        "No locks available",
        "Link has been severed",
        "Out of memory",
        "No message of desired type",
        "Protocol not available",
        "No space left on device",
        "Function not implemented",
        "Socket not connected",
        "Not a directory",
        "Directory not empty",
        "State not recoverable",
        "Not a socket",
        "Not supported",
        "Not a tty",
        "No such device or address",
        "Value too large for data type",
        "Previous owner died",
        "Operation not permitted",
        "Broken pipe",
        "Protocol error",
        "Protocol not supported",
        "Protocol wrong type for socket",
        "Result not representable",
        "Read-only file system",
        "Invalid seek",
        "No such process",
        "Stale file handle",
        "Operation timed out",
        "Text file busy",
        "Cross-device link",
        "Capabilities insufficient",
    ];
    usize::try_from(errno)
        .ok()
        .and_then(|i| TEXTS.get(i))
        .copied()
        .unwrap_or("Unknown error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_read_as_words() {
        assert_eq!(wasi_errno_text(44), "No such file or directory");
        assert_eq!(wasi_errno_text(8), "Bad file descriptor");
        assert_eq!(wasi_errno_text(64), "Broken pipe");
        assert_eq!(wasi_errno_text(76), "Capabilities insufficient");
        assert_eq!(wasi_errno_text(77), "Unknown error");
        assert_eq!(wasi_errno_text(-1), "Unknown error");
    }
}
