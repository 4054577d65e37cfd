//! LUN files: creating, growing, checking and removing flat VMDKs, and opening their extents.
//!
//! A LUN is a descriptor `<stem>.vmdk` and its extents: `<stem>-flat.vmdk` (monolithicFlat) or
//! `<stem>-f001.vmdk`, `<stem>-f002.vmdk`, ... of at most 2 GiB each (twoGbMaxExtentFlat, the
//! extent size qemu-img uses). Extents are made durable before the descriptor that names them is
//! written, and the descriptor is always replaced atomically (temp file, fsync, rename, fsync dir).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::descriptor::{CreateType, Descriptor, Extent, validate_file_name};
use super::error::{ParseErrorKind, VmdkError};
use super::{MAX_DESCRIPTOR_BYTES, MAX_EXTENTS, SECTOR_SIZE};
use crate::fsutil::{self, Existing, parent_dir};

/// The largest extent of a twoGbMaxExtentFlat LUN, in bytes: exactly 2 GiB, as qemu-img writes.
pub const TWO_GB_EXTENT_BYTES: u64 = 2 << 30;
const TWO_GB_EXTENT_SECTORS: u64 = TWO_GB_EXTENT_BYTES / SECTOR_SIZE;
/// Mode of the files we create (LUN data is private to the service).
const FILE_MODE: u32 = 0o600;

/// How [`create`] lays out a new LUN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// Allocate the extents' blocks now (fallocate) instead of leaving them sparse.
    pub preallocate: bool,
    /// twoGbMaxExtentFlat (extents of at most 2 GiB) instead of one monolithicFlat extent.
    pub split_2gb: bool,
}

/// Creates the LUN `<dir>/<stem>.vmdk` of `size_bytes` bytes and returns the descriptor's path.
/// Refuses to overwrite any existing file; on failure removes what it created.
pub fn create(
    dir: &Path,
    stem: &str,
    size_bytes: u64,
    opts: &CreateOptions,
) -> Result<PathBuf, VmdkError> {
    let descriptor_name = format!("{stem}.vmdk");
    for name in [stem, descriptor_name.as_str()] {
        validate_file_name(name).map_err(|reason| VmdkError::InvalidName {
            name: stem.to_string(),
            reason,
        })?;
    }
    let sectors = size_to_sectors(size_bytes)?;
    let (create_type, extents) = if opts.split_2gb {
        let count = sectors.div_ceil(TWO_GB_EXTENT_SECTORS);
        if count > MAX_EXTENTS as u64 {
            return Err(too_large(size_bytes));
        }
        let extents = split_2gb(stem, 0, sectors).collect();
        (CreateType::TwoGbMaxExtentFlat, extents)
    } else {
        let extents = vec![Extent::flat(format!("{stem}-flat.vmdk"), sectors)];
        (CreateType::MonolithicFlat, extents)
    };
    let descriptor =
        Descriptor::new(create_type, extents).map_err(|e| layout_error(e, size_bytes))?;
    let descriptor_path = dir.join(&descriptor_name);
    if fs::symlink_metadata(&descriptor_path).is_ok() {
        return Err(VmdkError::AlreadyExists {
            path: descriptor_path,
        });
    }

    let mut created = CreatedFiles::default();
    for extent in descriptor.extents() {
        let (Some(name), Some(len)) = (&extent.file, extent.required_file_len()) else {
            continue;
        };
        let path = dir.join(name);
        let file = create_new_file(&path)?;
        created.paths.push(path.clone());
        size_file(&file, &path, 0, len, opts.preallocate)?;
        file.sync_all()
            .map_err(|e| VmdkError::io(&path, "fsync", e))?;
    }
    sync_dir(dir)?;
    write_descriptor(&descriptor_path, &descriptor, false)?;
    created.keep();
    Ok(descriptor_path)
}

/// Grows the LUN described by `descriptor` to `new_size_bytes`. Refuses a shrink; the same size
/// is a no-op. monolithic (and vmfs) LUNs grow their last extent; twoGbMaxExtentFlat LUNs fill
/// their last extent to 2 GiB and add new ones. Extents are extended and fsynced before the
/// descriptor is rewritten atomically.
pub fn grow(descriptor: &Path, new_size_bytes: u64, preallocate: bool) -> Result<(), VmdkError> {
    let old = check(descriptor)?;
    let current = old.capacity_bytes();
    if new_size_bytes < current {
        return Err(VmdkError::Shrink {
            path: descriptor.to_path_buf(),
            current,
            requested: new_size_bytes,
        });
    }
    if new_size_bytes == current {
        return Ok(());
    }
    let new_sectors = size_to_sectors(new_size_bytes)?;
    let extents = grown_extents(descriptor, &old, new_sectors)?;
    let mut grown = old.clone();
    grown
        .set_extents(extents)
        .map_err(|e| layout_error(e, new_size_bytes))?;

    let dir = parent_dir(descriptor);
    let mut created = CreatedFiles::default();
    for (index, extent) in grown.extents().iter().enumerate() {
        let (Some(name), Some(len)) = (&extent.file, extent.required_file_len()) else {
            continue;
        };
        let path = dir.join(name);
        match old.extents().get(index) {
            Some(before) if before == extent => {}
            Some(_) => extend_file(&path, len, preallocate)?,
            None => {
                let file = create_new_file(&path)?;
                created.paths.push(path.clone());
                size_file(&file, &path, 0, len, preallocate)?;
                file.sync_all()
                    .map_err(|e| VmdkError::io(&path, "fsync", e))?;
            }
        }
    }
    if !created.paths.is_empty() {
        sync_dir(dir)?;
    }
    write_descriptor(descriptor, &grown, true)?;
    created.keep();
    Ok(())
}

/// Where vitd keeps the persistent reservations of the LUN with this descriptor (registered
/// with APTPL), beside it. Removed with the LUN: a new LUN made later with the same name must
/// not inherit them.
pub fn reservations_path(descriptor: &Path) -> PathBuf {
    descriptor.with_extension("pr")
}

/// Deletes the LUN's extent files (missing ones are skipped), then the descriptor and its saved
/// reservations.
pub fn remove(descriptor: &Path) -> Result<(), VmdkError> {
    remove_except(descriptor, &|_| false).map(drop)
}

/// Deletes the LUN's extent files (missing ones are skipped), then the descriptor and its saved
/// reservations, but not the files `keep` holds on to; returns those kept.
pub fn remove_except(
    descriptor: &Path,
    keep: &dyn Fn(&Path) -> bool,
) -> Result<Vec<PathBuf>, VmdkError> {
    let d = load(descriptor)?;
    let mut kept: Vec<PathBuf> = Vec::new();
    // An extent stored in the descriptor (refused by `check`) goes with the descriptor, below.
    let extents = extent_paths(descriptor, &d);
    for path in extents
        .into_iter()
        .filter(|p| p.file_name() != descriptor.file_name())
    {
        if keep(&path) {
            if !kept.contains(&path) {
                kept.push(path);
            }
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(VmdkError::io(&path, "remove", e)),
        }
    }
    if keep(descriptor) {
        kept.push(descriptor.to_path_buf());
    } else {
        fs::remove_file(descriptor).map_err(|e| VmdkError::io(descriptor, "remove", e))?;
        let pr = reservations_path(descriptor);
        match fs::remove_file(&pr) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(VmdkError::io(&pr, "remove", e)),
        }
    }
    sync_dir(parent_dir(descriptor))?;
    Ok(kept)
}

/// The paths of the files a descriptor's extents name (each lies in the descriptor's directory).
pub fn extent_paths(descriptor: &Path, d: &Descriptor) -> Vec<PathBuf> {
    let dir = parent_dir(descriptor);
    d.extents()
        .iter()
        .filter_map(|e| e.file.as_deref())
        .map(|name| dir.join(name))
        .collect()
}

/// Reads and parses a descriptor file (not a symlink, at most 64 KiB). A binary sparse VMDK is
/// reported as such.
pub fn load(descriptor: &Path) -> Result<Descriptor, VmdkError> {
    load_bytes(descriptor).map(|(d, _)| d)
}

/// [`load`], also returning the bytes read.
fn load_bytes(descriptor: &Path) -> Result<(Descriptor, Vec<u8>), VmdkError> {
    let file = open_regular(descriptor, false, 0)?;
    let mut bytes = Vec::with_capacity(1024);
    let cap = u64::try_from(MAX_DESCRIPTOR_BYTES).unwrap_or(u64::MAX);
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| VmdkError::io(descriptor, "read", e))?;
    if let Some(what) = sparse_magic(&bytes) {
        return Err(VmdkError::BinarySparse {
            path: descriptor.to_path_buf(),
            what,
        });
    }
    let d = Descriptor::parse_bytes(&bytes).map_err(|e| e.with_path(descriptor))?;
    Ok((d, bytes))
}

/// A LUN's files as they are now (the descriptor's bytes, each extent file's length), to put
/// back with [`Snapshot::restore`] when a change made after it must be taken back.
#[derive(Debug)]
pub struct Snapshot {
    descriptor: PathBuf,
    bytes: Vec<u8>,
    lens: Vec<(PathBuf, u64)>,
}

impl Snapshot {
    pub fn take(descriptor: &Path) -> Result<Self, VmdkError> {
        let (d, bytes) = load_bytes(descriptor)?;
        let mut lens = Vec::new();
        for path in extent_paths(descriptor, &d) {
            let meta = fs::symlink_metadata(&path).map_err(|e| VmdkError::io(&path, "stat", e))?;
            lens.push((path, meta.len()));
        }
        Ok(Snapshot {
            descriptor: descriptor.to_path_buf(),
            bytes,
            lens,
        })
    }

    /// Puts the descriptor back (atomically), then removes extent files made since and cuts
    /// extent files grown since back to their length.
    pub fn restore(&self) -> Result<(), VmdkError> {
        let now = load(&self.descriptor)
            .map(|d| extent_paths(&self.descriptor, &d))
            .unwrap_or_default();
        fsutil::write_atomic(&self.descriptor, &self.bytes, Existing::Replace, FILE_MODE)?;
        for path in now
            .iter()
            .filter(|p| !self.lens.iter().any(|(q, _)| q == *p))
        {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(VmdkError::io(path, "remove", e)),
            }
        }
        for (path, len) in &self.lens {
            let file = open_regular(path, true, 0)?;
            let now = file
                .metadata()
                .map_err(|e| VmdkError::io(path, "stat", e))?
                .len();
            if now > *len {
                file.set_len(*len)
                    .map_err(|e| VmdkError::io(path, "truncate", e))?;
                file.sync_all()
                    .map_err(|e| VmdkError::io(path, "fsync", e))?;
            }
        }
        sync_dir(parent_dir(&self.descriptor))
    }
}

/// Loads a descriptor and checks its extents: every extent file exists, is a regular file (not a
/// symlink) and is at least `(offset + sectors) * 512` bytes long.
pub fn check(descriptor: &Path) -> Result<Descriptor, VmdkError> {
    let d = load(descriptor)?;
    check_extent_files(descriptor, &d)?;
    let dir = parent_dir(descriptor);
    for extent in d.extents() {
        let (Some(name), Some(required)) = (&extent.file, extent.required_file_len()) else {
            continue;
        };
        let path = dir.join(name);
        let meta = fs::symlink_metadata(&path).map_err(|e| VmdkError::io(&path, "stat", e))?;
        if !meta.file_type().is_file() {
            return Err(VmdkError::NotRegularFile {
                path,
                found: describe(meta.file_type()),
            });
        }
        if meta.len() < required {
            return Err(VmdkError::ExtentTooSmall {
                path,
                actual: meta.len(),
                required,
            });
        }
    }
    Ok(d)
}

/// Refuses extents whose file is the descriptor itself or the LUN's saved reservations (writes
/// to the disk would overwrite them), and extents that share bytes of one file (a write to one
/// block would change another).
fn check_extent_files(descriptor: &Path, d: &Descriptor) -> Result<(), VmdkError> {
    let conflict = |why: String| VmdkError::ExtentConflict {
        path: descriptor.to_path_buf(),
        why,
    };
    let descriptor_name = descriptor.file_name();
    let pr = reservations_path(descriptor);
    let pr_name = pr.file_name();
    let mut ranges: Vec<(&str, u64, u64, usize)> = Vec::new();
    for (index, extent) in d.extents().iter().enumerate() {
        let (Some(name), Some(end)) = (&extent.file, extent.required_file_len()) else {
            continue;
        };
        let os_name = Some(std::ffi::OsStr::new(name));
        if os_name == descriptor_name {
            return Err(conflict(format!(
                "extent {index} is stored in the descriptor itself ({name:?})"
            )));
        }
        if os_name == pr_name {
            return Err(conflict(format!(
                "extent {index} is stored in the LUN's reservations file ({name:?})"
            )));
        }
        let start = extent.offset_sectors.saturating_mul(SECTOR_SIZE);
        ranges.push((name, start, end, index));
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        if let [(a_name, _, a_end, a), (b_name, b_start, _, b)] = pair
            && a_name == b_name
            && b_start < a_end
        {
            return Err(conflict(format!(
                "extents {} and {} share bytes of {a_name:?}",
                a.min(b),
                a.max(b)
            )));
        }
    }
    Ok(())
}

/// Opens extent `name` (a plain name) in `dir` for the data path: `O_NOFOLLOW | O_CLOEXEC`, plus
/// `O_DIRECT` when `direct`. Refuses symlinks and anything but a regular file.
pub fn open_extent(
    dir: &Path,
    name: &str,
    writable: bool,
    direct: bool,
) -> Result<File, VmdkError> {
    validate_file_name(name).map_err(|reason| VmdkError::InvalidName {
        name: name.to_string(),
        reason,
    })?;
    let extra = if direct { libc::O_DIRECT } else { 0 };
    open_regular(&dir.join(name), writable, extra)
}

/// twoGbMaxExtentFlat extents of at most 2 GiB covering `sectors`, named from `<stem>-f{first+1:03}`.
fn split_2gb(stem: &str, first: usize, sectors: u64) -> impl Iterator<Item = Extent> + '_ {
    let mut left = sectors;
    (first..).map_while(move |index| {
        if left == 0 {
            return None;
        }
        let n = left.min(TWO_GB_EXTENT_SECTORS);
        left -= n;
        Some(Extent::flat(format!("{stem}-f{:03}.vmdk", index + 1), n))
    })
}

/// The extents of `old` grown to `new_sectors` (more than its capacity).
fn grown_extents(
    path: &Path,
    old: &Descriptor,
    new_sectors: u64,
) -> Result<Vec<Extent>, VmdkError> {
    let not_growable = |reason| VmdkError::NotGrowable {
        path: path.to_path_buf(),
        reason,
    };
    let mut extents = old.extents().to_vec();
    let mut extra = new_sectors.saturating_sub(old.capacity_sectors());
    let last = extents
        .last_mut()
        .ok_or_else(|| not_growable("no extents"))?;
    if last.access != super::Access::ReadWrite || !last.kind.has_file() {
        return Err(not_growable(
            "the last extent is not a read-write FLAT or VMFS extent",
        ));
    }
    if *old.create_type() != CreateType::TwoGbMaxExtentFlat {
        last.sectors = last
            .sectors
            .checked_add(extra)
            .ok_or_else(|| not_growable("size overflow"))?;
        return Ok(extents);
    }
    let used = last.offset_sectors.saturating_add(last.sectors);
    let fill = TWO_GB_EXTENT_SECTORS.saturating_sub(used).min(extra);
    last.sectors += fill;
    extra -= fill;
    let count = extra.div_ceil(TWO_GB_EXTENT_SECTORS);
    if count.saturating_add(extents.len() as u64) > MAX_EXTENTS as u64 {
        return Err(too_large(new_sectors.saturating_mul(SECTOR_SIZE)));
    }
    let stem = descriptor_stem(path).ok_or_else(|| not_growable("descriptor name is not UTF-8"))?;
    let first = extents.len();
    extents.extend(split_2gb(stem, first, extra));
    Ok(extents)
}

/// `dir/lun.vmdk` -> `lun`.
fn descriptor_stem(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    Some(name.strip_suffix(".vmdk").unwrap_or(name))
}

fn size_to_sectors(size: u64) -> Result<u64, VmdkError> {
    if size == 0 {
        return Err(VmdkError::InvalidSize {
            size,
            reason: "must be positive",
        });
    }
    if !size.is_multiple_of(SECTOR_SIZE) {
        return Err(VmdkError::InvalidSize {
            size,
            reason: "must be a multiple of 512",
        });
    }
    Ok(size / SECTOR_SIZE)
}

fn too_large(size: u64) -> VmdkError {
    VmdkError::InvalidSize {
        size,
        reason: "too large for twoGbMaxExtentFlat (at most 4096 extents of 2 GiB)",
    }
}

/// Maps a descriptor-building error to the size or name error the caller can act on.
fn layout_error(err: VmdkError, size: u64) -> VmdkError {
    match err.parse_kind() {
        Some(ParseErrorKind::TooManyExtents(_)) => too_large(size),
        Some(ParseErrorKind::Overflow) => VmdkError::InvalidSize {
            size,
            reason: "extent sizes overflow 64 bits",
        },
        Some(ParseErrorKind::BadFileName { name, reason }) => VmdkError::InvalidName {
            name: name.clone(),
            reason,
        },
        _ => err,
    }
}

/// What a magic number at the start of a file says about a binary sparse VMDK.
fn sparse_magic(bytes: &[u8]) -> Option<&'static str> {
    match bytes.get(..4)? {
        b"KDMV" => Some("binary hosted sparse VMDK (KDMV magic)"),
        b"COWD" => Some("binary ESX sparse VMDK (COWD magic)"),
        _ => None,
    }
}

fn describe(ft: fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "unknown file type"
    }
}

/// Opens an existing regular file without following a final symlink. `O_NONBLOCK` keeps a FIFO
/// from blocking the open; it is cleared again once the file is known to be regular (io_uring
/// would otherwise return EAGAIN instead of waiting).
fn open_regular(path: &Path, writable: bool, extra_flags: i32) -> Result<File, VmdkError> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | extra_flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => VmdkError::NotRegularFile {
                path: path.to_path_buf(),
                found: "symbolic link",
            },
            _ => VmdkError::io(path, "open", e),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| VmdkError::io(path, "stat", e))?;
    if !meta.file_type().is_file() {
        return Err(VmdkError::NotRegularFile {
            path: path.to_path_buf(),
            found: describe(meta.file_type()),
        });
    }
    clear_nonblock(&file).map_err(|e| VmdkError::io(path, "fcntl", e))?;
    Ok(file)
}

fn clear_nonblock(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file` for the whole call; F_GETFL takes no
    // pointer argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL takes an integer argument.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a new file (never an existing one, never through a symlink).
fn create_new_file(path: &Path) -> Result<File, VmdkError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => VmdkError::AlreadyExists {
                path: path.to_path_buf(),
            },
            _ => VmdkError::io(path, "create", e),
        })
}

/// Makes `file` `to` bytes long from `from`: allocated blocks or a sparse hole.
fn size_file(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
    preallocate: bool,
) -> Result<(), VmdkError> {
    let result = if preallocate {
        allocate(file, from, to.saturating_sub(from))
    } else {
        file.set_len(to)
    };
    result.map_err(|e| VmdkError::io(path, if preallocate { "fallocate" } else { "truncate" }, e))
}

/// Extends an existing extent file to at least `required` bytes (never shrinks it), then fsyncs.
fn extend_file(path: &Path, required: u64, preallocate: bool) -> Result<(), VmdkError> {
    let file = open_regular(path, true, 0)?;
    let len = file
        .metadata()
        .map_err(|e| VmdkError::io(path, "stat", e))?
        .len();
    if len < required {
        size_file(&file, path, len, required, preallocate)?;
    }
    file.sync_all().map_err(|e| VmdkError::io(path, "fsync", e))
}

/// Allocates `len` bytes at `offset` (extending the file): fallocate, or posix_fallocate where
/// the file system does not support it.
fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "size exceeds off_t");
    let offset = libc::off_t::try_from(offset).map_err(|_| too_big())?;
    let len = libc::off_t::try_from(len).map_err(|_| too_big())?;
    let fd = file.as_raw_fd();
    loop {
        // SAFETY: `fd` is open for writing and owned by `file` for the whole call; fallocate
        // takes no pointers.
        let rc = unsafe { libc::fallocate(fd, 0, offset, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => break,
            _ => return Err(err),
        }
    }
    loop {
        // SAFETY: as above; posix_fallocate returns an errno value instead of setting errno.
        let rc = unsafe { libc::posix_fallocate(fd, offset, len) };
        match rc {
            0 => return Ok(()),
            libc::EINTR => continue,
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// Writes the descriptor atomically (see [`crate::fsutil::write_atomic`]): `replace` an existing
/// descriptor, or refuse one.
fn write_descriptor(path: &Path, descriptor: &Descriptor, replace: bool) -> Result<(), VmdkError> {
    if path.file_name().and_then(|n| n.to_str()).is_none() {
        return Err(VmdkError::InvalidName {
            name: path.display().to_string(),
            reason: "descriptor path has no UTF-8 file name",
        });
    }
    let existing = if replace {
        Existing::Replace
    } else {
        Existing::Refuse
    };
    Ok(fsutil::write_atomic(
        path,
        descriptor.to_string().as_bytes(),
        existing,
        FILE_MODE,
    )?)
}

fn sync_dir(dir: &Path) -> Result<(), VmdkError> {
    Ok(fsutil::sync_dir(dir)?)
}

/// Files created so far; removed on drop unless [`CreatedFiles::keep`] is called.
#[derive(Default)]
struct CreatedFiles {
    paths: Vec<PathBuf>,
}

impl CreatedFiles {
    fn keep(mut self) {
        self.paths.clear();
    }
}

impl Drop for CreatedFiles {
    fn drop(&mut self) {
        for path in &self.paths {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmdk::{ExtentMap, Op};
    use std::os::unix::fs::{FileExt, PermissionsExt};

    const MIB: u64 = 1 << 20;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_snapshot_takes_a_growth_back() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CreateOptions {
            preallocate: false,
            split_2gb: true,
        };
        let d = create(dir.path(), "l", 1 << 20, &opts).unwrap();
        let before = fs::read(&d).unwrap();
        let snap = Snapshot::take(&d).unwrap();
        grow(&d, 3 << 30, false).unwrap();
        let f1 = dir.path().join("l-f001.vmdk");
        let f2 = dir.path().join("l-f002.vmdk");
        assert!(f2.exists() && fs::metadata(&f1).unwrap().len() == TWO_GB_EXTENT_BYTES);
        snap.restore().unwrap();
        assert_eq!(fs::read(&d).unwrap(), before);
        assert!(!f2.exists());
        assert_eq!(fs::metadata(&f1).unwrap().len(), 1 << 20);
        assert_eq!(check(&d).unwrap().capacity_bytes(), 1 << 20);
    }

    #[test]
    fn create_monolithic_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let path = create(dir.path(), "lun0", 64 * MIB, &CreateOptions::default()).unwrap();
        assert_eq!(path, dir.path().join("lun0.vmdk"));
        assert_eq!(names(dir.path()), ["lun0-flat.vmdk", "lun0.vmdk"]);
        let flat = fs::metadata(dir.path().join("lun0-flat.vmdk")).unwrap();
        assert_eq!(flat.len(), 64 * MIB);
        assert_eq!(flat.permissions().mode() & 0o777, FILE_MODE);
        let d = check(&path).unwrap();
        assert_eq!(d.capacity_bytes(), 64 * MIB);
        assert_eq!(d.create_type(), &CreateType::MonolithicFlat);
    }

    #[test]
    fn create_preallocated_allocates_blocks() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let opts = CreateOptions {
            preallocate: true,
            split_2gb: false,
        };
        create(dir.path(), "p", 4 * MIB, &opts).unwrap();
        let meta = fs::metadata(dir.path().join("p-flat.vmdk")).unwrap();
        assert_eq!(meta.len(), 4 * MIB);
        assert!(meta.blocks() * 512 >= 4 * MIB, "blocks {}", meta.blocks());
    }

    #[test]
    fn create_split_names_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CreateOptions {
            preallocate: false,
            split_2gb: true,
        };
        let path = create(dir.path(), "big", 5 << 30, &opts).unwrap();
        assert_eq!(
            names(dir.path()),
            [
                "big-f001.vmdk",
                "big-f002.vmdk",
                "big-f003.vmdk",
                "big.vmdk"
            ]
        );
        let d = check(&path).unwrap();
        let sizes: Vec<u64> = d.extents().iter().map(|e| e.sectors * 512).collect();
        assert_eq!(sizes, [2 << 30, 2 << 30, 1 << 30]);
    }

    #[test]
    fn create_refuses_bad_sizes_names_and_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let o = CreateOptions::default();
        for size in [0, 511, 513, 1000] {
            assert!(matches!(
                create(dir.path(), "x", size, &o),
                Err(VmdkError::InvalidSize { .. })
            ));
        }
        for stem in ["", "a/b", "..", "."] {
            assert!(
                matches!(
                    create(dir.path(), stem, 4096, &o),
                    Err(VmdkError::InvalidName { .. })
                ),
                "{stem:?}"
            );
        }
        let split = CreateOptions {
            preallocate: false,
            split_2gb: true,
        };
        assert!(matches!(
            create(dir.path(), "huge", (4097u64 << 31) - 512, &split),
            Err(VmdkError::InvalidSize { .. })
        ));
        assert!(names(dir.path()).is_empty());
        create(dir.path(), "x", 4096, &o).unwrap();
        assert!(matches!(
            create(dir.path(), "x", 8192, &o),
            Err(VmdkError::AlreadyExists { .. })
        ));
        // An existing extent file stops the creation, and nothing new is left behind.
        fs::write(dir.path().join("y-f002.vmdk"), b"keep").unwrap();
        let err = create(dir.path(), "y", 3 << 30, &split).unwrap_err();
        assert!(
            matches!(err, VmdkError::AlreadyExists { ref path } if path.ends_with("y-f002.vmdk"))
        );
        assert_eq!(names(dir.path()), ["x-flat.vmdk", "x.vmdk", "y-f002.vmdk"]);
        assert_eq!(fs::read(dir.path().join("y-f002.vmdk")).unwrap(), b"keep");
        assert_eq!(
            fs::metadata(dir.path().join("x-flat.vmdk")).unwrap().len(),
            4096
        );
    }

    #[test]
    fn grow_monolithic_keeps_data_and_refuses_shrink() {
        let dir = tempfile::tempdir().unwrap();
        let path = create(dir.path(), "g", MIB, &CreateOptions::default()).unwrap();
        let flat = dir.path().join("g-flat.vmdk");
        open_extent(dir.path(), "g-flat.vmdk", true, false)
            .unwrap()
            .write_all_at(b"hello", MIB - 5)
            .unwrap();
        let before = fs::read_to_string(&path).unwrap();
        match grow(&path, MIB / 2, false) {
            Err(VmdkError::Shrink {
                current, requested, ..
            }) => assert_eq!((current, requested), (MIB, MIB / 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), before);
        grow(&path, MIB, false).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), before);
        assert!(matches!(
            grow(&path, MIB + 100, false),
            Err(VmdkError::InvalidSize { .. })
        ));
        grow(&path, 3 * MIB, true).unwrap();
        let d = check(&path).unwrap();
        assert_eq!(d.capacity_bytes(), 3 * MIB);
        assert_eq!(d.extents().len(), 1);
        assert_eq!(fs::metadata(&flat).unwrap().len(), 3 * MIB);
        let mut buf = [0u8; 5];
        open_extent(dir.path(), "g-flat.vmdk", false, false)
            .unwrap()
            .read_exact_at(&mut buf, MIB - 5)
            .unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(names(dir.path()), ["g-flat.vmdk", "g.vmdk"]);
    }

    #[test]
    fn grow_split_fills_then_adds() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CreateOptions {
            preallocate: false,
            split_2gb: true,
        };
        let path = create(dir.path(), "s", MIB, &opts).unwrap();
        grow(&path, (4 << 30) + MIB, false).unwrap();
        let d = check(&path).unwrap();
        let layout: Vec<(Option<&str>, u64)> = d
            .extents()
            .iter()
            .map(|e| (e.file.as_deref(), e.sectors * 512))
            .collect();
        assert_eq!(
            layout,
            [
                (Some("s-f001.vmdk"), 2 << 30),
                (Some("s-f002.vmdk"), 2 << 30),
                (Some("s-f003.vmdk"), MIB)
            ]
        );
        assert_eq!(ExtentMap::new(&d).capacity(), (4 << 30) + MIB);
    }

    #[test]
    fn grow_refuses_when_a_new_extent_exists() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CreateOptions {
            preallocate: false,
            split_2gb: true,
        };
        let path = create(dir.path(), "s", 2 << 30, &opts).unwrap();
        fs::write(dir.path().join("s-f002.vmdk"), b"x").unwrap();
        let before = fs::read_to_string(&path).unwrap();
        assert!(matches!(
            grow(&path, 3 << 30, false),
            Err(VmdkError::AlreadyExists { .. })
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), before);
        assert_eq!(fs::read(dir.path().join("s-f002.vmdk")).unwrap(), b"x");
    }

    #[test]
    fn grow_refuses_zero_last_extent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.vmdk");
        fs::write(
            &path,
            "# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 8 ZERO\n",
        )
        .unwrap();
        assert!(matches!(
            grow(&path, 8192, false),
            Err(VmdkError::NotGrowable { .. })
        ));
    }

    #[test]
    fn check_finds_missing_short_and_symlinked_extents() {
        let dir = tempfile::tempdir().unwrap();
        let path = create(dir.path(), "c", 8192, &CreateOptions::default()).unwrap();
        let flat = dir.path().join("c-flat.vmdk");
        fs::OpenOptions::new()
            .write(true)
            .open(&flat)
            .unwrap()
            .set_len(4096)
            .unwrap();
        match check(&path) {
            Err(VmdkError::ExtentTooSmall {
                actual, required, ..
            }) => assert_eq!((actual, required), (4096, 8192)),
            other => panic!("{other:?}"),
        }
        fs::remove_file(&flat).unwrap();
        assert!(matches!(
            check(&path),
            Err(VmdkError::Io { op: "stat", .. })
        ));
        let real = dir.path().join("real");
        fs::write(&real, vec![0u8; 8192]).unwrap();
        std::os::unix::fs::symlink(&real, &flat).unwrap();
        assert!(matches!(
            check(&path),
            Err(VmdkError::NotRegularFile {
                found: "symbolic link",
                ..
            })
        ));
        assert!(matches!(
            open_extent(dir.path(), "c-flat.vmdk", false, false),
            Err(VmdkError::NotRegularFile {
                found: "symbolic link",
                ..
            })
        ));
        fs::remove_file(&flat).unwrap();
        fs::create_dir(&flat).unwrap();
        assert!(matches!(
            check(&path),
            Err(VmdkError::NotRegularFile {
                found: "directory",
                ..
            })
        ));
        assert!(matches!(
            open_extent(dir.path(), "c-flat.vmdk", false, false),
            Err(VmdkError::NotRegularFile {
                found: "directory",
                ..
            })
        ));
    }

    #[test]
    fn check_refuses_extents_in_the_descriptor_its_reservations_or_shared_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = create(dir.path(), "s", 1 << 20, &CreateOptions::default()).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        // Long enough that the one-sector extent fits in the descriptor's own bytes.
        let padding = "# padding\n".repeat(100);
        let cases = [
            (r#"RW 1 FLAT "s.vmdk" 0"#, "descriptor itself"),
            (r#"RW 1 FLAT "s.pr" 0"#, "reservations file"),
            (
                "RW 2048 FLAT \"s-flat.vmdk\" 0\nRW 8 FLAT \"s-flat.vmdk\" 2040",
                "extents 0 and 1 share bytes of \"s-flat.vmdk\"",
            ),
        ];
        fs::write(dir.path().join("s.pr"), vec![0u8; 4096]).unwrap();
        for (extents, want) in cases {
            let edited = text.replace(r#"RW 2048 FLAT "s-flat.vmdk" 0"#, extents) + &padding;
            fs::write(&path, &edited).unwrap();
            match check(&path) {
                Err(e @ VmdkError::ExtentConflict { .. }) => {
                    assert!(e.to_string().contains(want), "{e}")
                }
                other => panic!("{extents}: {other:?}"),
            }
        }
        // Extents side by side in one file are fine.
        let edited = text.replace(
            r#"RW 2048 FLAT "s-flat.vmdk" 0"#,
            "RW 1024 FLAT \"s-flat.vmdk\" 1024\nRW 1024 FLAT \"s-flat.vmdk\" 0",
        );
        fs::write(&path, &edited).unwrap();
        assert_eq!(check(&path).unwrap().capacity_bytes(), 1 << 20);
        // A LUN whose extent is its own descriptor can still be removed.
        let edited = text.replace(r#"RW 2048 FLAT "s-flat.vmdk" 0"#, r#"RW 1 FLAT "s.vmdk" 0"#);
        fs::write(&path, edited + &padding).unwrap();
        remove(&path).unwrap();
        assert_eq!(names(dir.path()), ["s-flat.vmdk"]);
    }

    #[test]
    fn open_extent_refuses_fifo_without_blocking_and_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            open_extent(dir.path(), "pipe", false, false),
            Err(VmdkError::NotRegularFile { found: "fifo", .. })
        ));
        for name in ["../pipe", "", "/etc/passwd"] {
            assert!(matches!(
                open_extent(dir.path(), name, false, false),
                Err(VmdkError::InvalidName { .. })
            ));
        }
    }

    #[test]
    fn load_limits_and_binary_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.vmdk");
        let mut text = String::from("# Disk DescriptorFile\n");
        text.push_str(&"#".repeat(MAX_DESCRIPTOR_BYTES));
        fs::write(&big, &text).unwrap();
        match load(&big) {
            Err(VmdkError::DescriptorTooLarge { path, limit }) => {
                assert_eq!((path, limit), (big.clone(), MAX_DESCRIPTOR_BYTES))
            }
            other => panic!("{other:?}"),
        }
        let sparse = dir.path().join("sparse.vmdk");
        let mut bytes = b"KDMV".to_vec();
        bytes.resize(200_000, 0);
        fs::write(&sparse, &bytes).unwrap();
        let err = load(&sparse).unwrap_err();
        assert!(err.is_unsupported_format());
        assert!(err.to_string().contains("KDMV"), "{err}");
        let bad = dir.path().join("bad.vmdk");
        fs::write(&bad, "# Disk DescriptorFile\ncreateType=\"vmfsThin\"\n").unwrap();
        let msg = load(&bad).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!(
                "{}:2: unsupported createType \"vmfsThin\"",
                bad.display()
            )),
            "{msg}"
        );
    }

    #[test]
    fn remove_deletes_everything_and_tolerates_missing_extents() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CreateOptions {
            preallocate: false,
            split_2gb: true,
        };
        let path = create(dir.path(), "r", 3 << 30, &opts).unwrap();
        fs::remove_file(dir.path().join("r-f002.vmdk")).unwrap();
        fs::write(dir.path().join("other"), b"stay").unwrap();
        remove(&path).unwrap();
        assert_eq!(names(dir.path()), ["other"]);
        assert!(matches!(
            remove(&path),
            Err(VmdkError::Io { op: "open", .. })
        ));
    }

    #[test]
    fn map_write_then_read_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CreateOptions {
            preallocate: false,
            split_2gb: true,
        };
        let path = create(dir.path(), "m", 3 << 30, &opts).unwrap();
        let d = check(&path).unwrap();
        let map = ExtentMap::new(&d);
        let at = (2u64 << 30) - 3;
        let data = b"spanning";
        let mut done = 0usize;
        for seg in map.map(at, data.len() as u64, Op::Write).unwrap() {
            let name = d.extents()[seg.extent].file.as_deref().unwrap();
            let f = open_extent(dir.path(), name, true, false).unwrap();
            let n = usize::try_from(seg.len).unwrap();
            f.write_all_at(&data[done..done + n], seg.file_offset)
                .unwrap();
            done += n;
        }
        assert_eq!(done, data.len());
        let mut tail = [0u8; 3];
        File::open(dir.path().join("m-f001.vmdk"))
            .unwrap()
            .read_exact_at(&mut tail, (2 << 30) - 3)
            .unwrap();
        assert_eq!(&tail, b"spa");
        let mut head = [0u8; 5];
        File::open(dir.path().join("m-f002.vmdk"))
            .unwrap()
            .read_exact_at(&mut head, 0)
            .unwrap();
        assert_eq!(&head, b"nning");
    }
}
