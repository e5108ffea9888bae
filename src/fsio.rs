//! Opening input files without trusting what kind of file a name points at, and the process's stop request
//! that long reads obey.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks every long read of this process to stop ([`stop_requested`]): shard reads and digests end with an
/// [`io::ErrorKind::Interrupted`] error at their next block. Set from a signal handler (it only stores to an
/// atomic).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether [`request_stop`] was called.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

const INTERRUPTED: &str = "interrupted by a stop request (SIGINT/SIGTERM)";

/// The error a read interrupted by a stop request ends with.
pub fn interrupted(path: &Path) -> Error {
    Error::io(path, io::Error::new(io::ErrorKind::Interrupted, INTERRUPTED))
}

/// Whether an error's message (as a shard failure carries it) says the work was interrupted by a stop request
/// rather than failed.
///
/// ```
/// let e = flyt::interrupted(std::path::Path::new("a.tar")).to_string();
/// assert!(flyt::is_interruption(&e));
/// assert!(!flyt::is_interruption("a.tar: No space left on device (os error 28)"));
/// ```
pub fn is_interruption(message: &str) -> bool {
    message.contains(INTERRUPTED)
}

/// What kind of file a metadata says, for a message.
fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Whether `path` (following symlinks) is a regular file, checked by `stat` without opening it (so a FIFO does
/// not block). `Err` says what it is instead.
pub fn check_regular(path: &Path) -> std::result::Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) => Err(format!("{} is {}, not a regular file", path.display(), kind_of(m.file_type()))),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Opens `path` for reading only if it is a regular file. The open does not block on a FIFO (`O_NONBLOCK`), the
/// check is made on the opened descriptor (so a name swapped for a FIFO or a device after a listing is still
/// refused), and the descriptor is then made blocking again for ordinary reads.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let f = dir.path().join("a.tar");
/// std::fs::write(&f, b"x").unwrap();
/// assert!(flyt::open_regular(&f).is_ok());
/// assert!(flyt::open_regular(dir.path()).is_err());
/// assert!(flyt::open_regular(std::path::Path::new("/dev/zero")).unwrap_err().to_string().contains("character device"));
/// ```
pub fn open_regular(path: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, format!("{}, not a regular file", kind_of(meta.file_type()))),
        ));
    }
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is the open descriptor `file` owns for the duration of these calls; F_GETFL/F_SETFL only
    // read and change its status flags.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !ok {
        return Err(Error::io(path, io::Error::last_os_error()));
    }
    Ok(file)
}
