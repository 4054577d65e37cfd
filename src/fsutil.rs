//! Crash-safe file writing, shared by the datastore (vit.conf, reservation state) and the VMDK
//! writer (descriptors).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A failed step of a file operation: which file, what was being done, the OS error.
#[derive(Debug)]
pub struct FsError {
    pub path: PathBuf,
    pub op: &'static str,
    pub source: io::Error,
}

fn err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// What [`write_atomic`] does when the file is already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Replace it, keeping its permission bits.
    Replace,
    /// Leave it and fail with an error of kind `AlreadyExists` (op "link").
    Refuse,
}

/// Writes `bytes` to `path` so that a crash leaves the old content (or no file) or the new
/// content, never a torn file: a temporary file in the same directory (created exclusively, not
/// through a link) is written and fsynced, then renamed over `path` (or, to refuse an existing
/// file, hard-linked to it and removed), and the directory is fsynced. A new file is created with
/// `mode` (less the umask).
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    existing: Existing,
    mode: u32,
) -> Result<(), FsError> {
    let dir = parent_dir(path);
    let Some(name) = path.file_name() else {
        return Err(FsError {
            path: path.to_path_buf(),
            op: "name",
            source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
        });
    };
    let keep_mode = match existing {
        Existing::Replace => fs::metadata(path)
            .ok()
            .map(|m| m.permissions().mode() & 0o7777),
        Existing::Refuse => None,
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{:08x}",
        name.to_string_lossy(),
        rand::random::<u32>()
    ));
    let result = write_temp(&tmp, bytes, mode, keep_mode).and_then(|()| match existing {
        Existing::Replace => fs::rename(&tmp, path).map_err(err(path, "rename")),
        Existing::Refuse => fs::hard_link(&tmp, path).map_err(err(path, "link")),
    });
    // After a rename the temporary name is gone; after a link or a failure it must go.
    if existing == Existing::Refuse || result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

fn write_temp(tmp: &Path, bytes: &[u8], mode: u32, keep_mode: Option<u32>) -> Result<(), FsError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(tmp)
        .map_err(err(tmp, "create"))?;
    if let Some(m) = keep_mode {
        file.set_permissions(fs::Permissions::from_mode(m))
            .map_err(err(tmp, "chmod"))?;
    }
    file.write_all(bytes).map_err(err(tmp, "write"))?;
    file.sync_all().map_err(err(tmp, "fsync"))
}

/// fsyncs a directory so that a rename or creation in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir, "fsync directory"))
}

/// The directory a file is in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_keeping_the_mode_and_refuses_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one", Existing::Refuse, 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let e = write_atomic(&path, b"two", Existing::Refuse, 0o600).unwrap_err();
        assert_eq!(e.source.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"one");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, b"three", Existing::Replace, 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"three");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("f");
        let e = write_atomic(&missing, b"x", Existing::Replace, 0o600).unwrap_err();
        assert_eq!(e.op, "create");
        assert_eq!(e.source.kind(), io::ErrorKind::NotFound);
    }
}
