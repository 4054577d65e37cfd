//! The datastore: the on-disk layout of a vit service, as vSAN's iSCSI target service lays it out.
//!
//! ```text
//! <ds>/.iSCSI-Config/etc/vit.conf                 the whole configuration
//! <ds>/.iSCSI-Config/etc/vit.conf.lock            serializes writers (an flock)
//! <ds>/.iSCSI-Config/etc/vitd.lock                read-locked by each vitd serving it
//! <ds>/.iSCSI-Config/targets/<uuid> -> ../../<uuid>
//! <ds>/<uuid>/<lun-uuid>.vmdk                      a LUN descriptor, extents beside it
//! ```
//!
//! Every change to vit.conf goes through [`Datastore::lock`] then [`Datastore::commit`]: the new text
//! is written to a temporary file, fsynced, renamed over vit.conf, the directory fsynced, and
//! `generation` incremented by exactly one. Paths from the config never leave the datastore
//! ([`Datastore::resolve_lun_path`]).

mod validate;

pub use validate::Problem;
pub use validate::lun_body;

use crate::config::{self, Config, ConfigError};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};

/// The home object's directory, relative to the datastore root.
pub const HOME_DIR: &str = ".iSCSI-Config";
/// The largest vit.conf we read: a hostile or corrupt file cannot make us allocate more.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}", join_errors(.0))]
    Config(Vec<ConfigError>),
    /// A change whose vit.conf would not verify: nothing was written, and the places name
    /// lines of the text it would have written.
    #[error("{}", refused_errors(.0))]
    Refused(Vec<ConfigError>),
    /// The datastore directory does not exist (a wrong `--datastore`, or the default one before
    /// vitd first made it).
    #[error(
        "no datastore at {}: the directory does not exist; make one with \
         `vitctl --datastore {} homeobject create`",
        .0.display(),
        shell_word(.0)
    )]
    NoDatastore(PathBuf),
    /// The datastore (its root here) has no vit.conf; the hint names it, since a bare
    /// `vitctl homeobject create` would make the default datastore instead.
    #[error(
        "no home object at {}: run `vitctl --datastore {} homeobject create` first",
        home_config(.0).display(),
        shell_word(.0)
    )]
    NoHomeObject(PathBuf),
    #[error("path {path:?} is not allowed: {why}")]
    UnsafePath { path: String, why: String },
    #[error("{0}")]
    Vmdk(#[from] crate::vmdk::VmdkError),
    #[error("{0}")]
    Invalid(String),
}

/// `path` as one shell word: bare when it has only characters no shell treats specially, else
/// in single quotes (a quote in it as `'\''`), so that a command naming it can be pasted.
fn shell_word(path: &Path) -> String {
    let s = path.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn home_config(root: &Path) -> PathBuf {
    root.join(HOME_DIR).join("etc").join("vit.conf")
}

fn refused_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("{e} (in the vit.conf this change would write: nothing was written)"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn join_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

pub type Result<T, E = DatastoreError> = std::result::Result<T, E>;

impl From<crate::fsutil::FsError> for DatastoreError {
    fn from(e: crate::fsutil::FsError) -> Self {
        DatastoreError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content (see
/// [`crate::fsutil::write_atomic`]); a new file is created readable by all (less the umask).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use crate::fsutil::{Existing, write_atomic};
    Ok(write_atomic(path, bytes, Existing::Replace, 0o666)?)
}

/// Attaches a path to an I/O error.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DatastoreError + '_ {
    move |source| DatastoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A datastore root directory.
#[derive(Clone, Debug)]
pub struct Datastore {
    root: PathBuf,
}

/// Proof that the caller holds the config lock; released on drop.
#[derive(Debug)]
pub struct ConfigLock {
    _file: File,
}

/// A vitd's mark on the datastore it serves ([`Datastore::mark_served`]); released on drop.
#[derive(Debug)]
pub struct Served {
    _file: File,
}

/// A lock of the whole file, of `kind` (`F_RDLCK` or `F_WRLCK`), for the OFD fcntl commands.
fn whole_file_lock(kind: libc::c_int) -> libc::flock {
    // SAFETY: an all-zero flock is a valid value of this plain C struct (l_pid 0, as OFD
    // locks require).
    let mut lk: libc::flock = unsafe { std::mem::zeroed() };
    lk.l_type = kind as libc::c_short;
    lk.l_whence = libc::SEEK_SET as libc::c_short;
    lk
}

/// Opens `etc/vitd.lock` to read, or with `create` makes it (read and write; failing when it
/// exists) readable by every user, whatever the umask: vitctl, run by whoever may change the
/// datastore, tests the lock through a read-only open. Never waits (O_NONBLOCK: whatever is at the
/// path, a FIFO too, the open returns at once).
fn open_mark(path: &Path, create: bool) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = File::options()
        .read(true)
        .write(create)
        .create_new(create)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if create {
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
    }
    Ok(file)
}

impl Datastore {
    /// Opens a datastore root; the directory must exist.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let meta = match fs::metadata(&root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A link to nothing (a mount that is not there) is no directory to make.
                return Err(match fs::read_link(&root) {
                    Ok(to) => DatastoreError::Invalid(format!(
                        "{} is a symbolic link to {}, which does not exist",
                        root.display(),
                        to.display()
                    )),
                    Err(_) => DatastoreError::NoDatastore(root),
                });
            }
            r => r.map_err(io_err(&root))?,
        };
        if !meta.is_dir() {
            return Err(DatastoreError::Invalid(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        Ok(Datastore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn etc_dir(&self) -> PathBuf {
        self.root.join(HOME_DIR).join("etc")
    }
    pub fn targets_dir(&self) -> PathBuf {
        self.root.join(HOME_DIR).join("targets")
    }
    pub fn config_path(&self) -> PathBuf {
        home_config(&self.root)
    }
    /// The directory holding a target's LUNs.
    pub fn target_dir(&self, uuid: &str) -> PathBuf {
        self.root.join(uuid)
    }

    pub fn home_object_exists(&self) -> bool {
        self.config_path().is_file()
    }

    /// Ok when vit.conf is a file; [`DatastoreError::NoHomeObject`] only when it (or a directory
    /// above it in the home object) does not exist. Any other failure to look (a directory this
    /// user may not search, a file where a directory belongs) is that error at its path, since
    /// `vitctl homeobject create` would fail on it too.
    pub fn check_home_object(&self) -> Result<()> {
        let path = self.config_path();
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(DatastoreError::Invalid(format!(
                "{} is not a file",
                path.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(DatastoreError::NoHomeObject(self.root.clone()))
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Creates the home object with `initial` as generation 1, unless one exists (then it is left
    /// exactly as it was and `Ok(false)` is returned).
    pub fn create_home_object(&self, initial: &Config) -> Result<bool> {
        let etc = self.etc_dir();
        fs::create_dir_all(&etc).map_err(io_err(&etc))?;
        let targets = self.targets_dir();
        fs::create_dir_all(&targets).map_err(io_err(&targets))?;
        let _lock = self.lock()?;
        if self.home_object_exists() {
            return Ok(false);
        }
        let mut cfg = initial.clone();
        cfg.generation = Some(1);
        self.write_config(&cfg)?;
        Ok(true)
    }

    /// Takes the exclusive writer lock (blocking until other writers are done).
    pub fn lock(&self) -> Result<ConfigLock> {
        let etc = self.etc_dir();
        if let Err(e) = fs::metadata(&etc) {
            return Err(if e.kind() == io::ErrorKind::NotFound {
                DatastoreError::NoHomeObject(self.root.clone())
            } else {
                io_err(&etc)(e)
            });
        }
        let path = etc.join("vit.conf.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        Ok(ConfigLock { _file: file })
    }

    /// `etc/vitd.lock`: a vitd that serves this datastore holds a read lock on it (an open file
    /// description lock, so nothing else in the process can drop it), for vitctl to tell that
    /// vit.conf, read at vitd's start, has changed under it. A file of its own: the writers'
    /// flock on `vit.conf.lock` never meets it, even where a file system maps flock to fcntl locks.
    fn served_lock_path(&self) -> PathBuf {
        self.etc_dir().join("vitd.lock")
    }

    /// Marks this datastore as served by the calling process until the returned value is dropped.
    pub fn mark_served(&self) -> Result<Served> {
        let path = self.served_lock_path();
        // Read-only when it exists (a read lock needs no more; a datastore vitd may not write).
        let file = open_mark(&path, false)
            .or_else(|_| match open_mark(&path, true) {
                // Another vitd made it between the two opens.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open_mark(&path, false),
                r => r,
            })
            .map_err(io_err(&path))?;
        let mut lk = whole_file_lock(libc::F_RDLCK);
        // SAFETY: `file` is an open descriptor and `lk` a valid flock struct that outlives the call.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut lk) } != 0 {
            return Err(io_err(&path)(io::Error::last_os_error()));
        }
        Ok(Served { _file: file })
    }

    /// Whether some vitd serves this datastore now ([`Datastore::mark_served`]); false when that
    /// cannot be told.
    pub fn served(&self) -> bool {
        let Ok(file) = open_mark(&self.served_lock_path(), false) else {
            return false;
        };
        let mut lk = whole_file_lock(libc::F_WRLCK);
        // SAFETY: `file` is an open descriptor and `lk` a valid flock struct that outlives the call.
        let ok = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lk) } == 0;
        ok && i32::from(lk.l_type) != libc::F_UNLCK
    }

    /// Reads vit.conf as text, bounded by [`MAX_CONFIG_BYTES`]; bytes that are not UTF-8 are a
    /// config error at their line and column.
    pub fn read_config_text(&self) -> Result<String> {
        self.check_home_object()?;
        let path = self.config_path();
        let file = path.display().to_string();
        let bytes = match read_bounded(&path, MAX_CONFIG_BYTES) {
            Err(DatastoreError::Invalid(_)) => {
                // Where the parser puts a file over its limit: every problem has a place.
                let at = config::Pos { line: 1, col: 1 };
                let msg = format!("file is more than the limit of {MAX_CONFIG_BYTES} bytes");
                return Err(DatastoreError::Config(vec![ConfigError::at(
                    &file, at, msg,
                )]));
            }
            other => other?,
        };
        config::decode(bytes, &file).map_err(|e| DatastoreError::Config(vec![e]))
    }

    /// Reads, parses and verifies vit.conf.
    pub fn load_config(&self) -> Result<Config> {
        let text = self.read_config_text()?;
        let file = self.config_path().display().to_string();
        config::load(&text, &file).map_err(DatastoreError::Config)
    }

    /// Writes `cfg` as the next generation: verifies it, increments `generation` by one from the
    /// file's current value and replaces vit.conf atomically. Returns the new generation.
    pub fn commit(&self, _lock: &ConfigLock, cfg: &mut Config) -> Result<u64> {
        let current = self.load_config()?.generation.unwrap_or(0);
        let next = current
            .checked_add(1)
            .ok_or_else(|| DatastoreError::Invalid("generation counter overflow".into()))?;
        cfg.generation = Some(next);
        self.write_config(cfg)?;
        Ok(next)
    }

    fn write_config(&self, cfg: &Config) -> Result<()> {
        let text = config::print(cfg);
        let path = self.config_path();
        // Never write what we could not read back: the printer and the verifier must agree.
        let file = path.display().to_string();
        config::load(&text, &file).map_err(DatastoreError::Refused)?;
        write_atomic(&path, text.as_bytes())
    }

    /// Resolves a LUN `path` from vit.conf (relative to `.iSCSI-Config/targets/`) to the descriptor's
    /// real location, refusing anything that could leave the datastore: absolute paths, `..` or `.`
    /// components, a first component that is not a `targets/<uuid> -> ../../<uuid>` link, and any
    /// other symlink on the way.
    pub fn resolve_lun_path(&self, path: &str) -> Result<PathBuf> {
        let unsafe_path = |why: &str| DatastoreError::UnsafePath {
            path: path.to_string(),
            why: why.to_string(),
        };
        let parts = lun_path_parts(path)?;
        let [first, rest @ ..] = parts.as_slice() else {
            return Err(unsafe_path("it is empty"));
        };
        let link = self.targets_dir().join(first);
        let expected = Path::new("..").join("..").join(first);
        match fs::read_link(&link) {
            Ok(target) if target == expected => {}
            Ok(target) => {
                return Err(unsafe_path(&format!(
                    "{} points to {}, not {}",
                    link.display(),
                    target.display(),
                    expected.display()
                )));
            }
            Err(e) => {
                return Err(unsafe_path(&format!(
                    "{} is not a target link: {e}",
                    link.display()
                )));
            }
        }
        let mut real = self.root.join(first);
        let components = std::iter::once(*first).chain(rest.iter().copied());
        for (i, part) in components.enumerate() {
            if i > 0 {
                real.push(part);
            }
            match fs::symlink_metadata(&real) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_path(&format!("{} is a symlink", real.display())));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(DatastoreError::Io {
                        path: real,
                        source: e,
                    });
                }
            }
        }
        Ok(real)
    }

    /// The files the LUN `path` (from vit.conf) is made of: its descriptor, then its extent files.
    pub fn lun_files(&self, path: &str) -> Result<Vec<PathBuf>> {
        let descriptor = self.resolve_lun_path(path)?;
        let d = crate::vmdk::load(&descriptor)?;
        let mut files = crate::vmdk::extent_paths(&descriptor, &d);
        files.insert(0, descriptor);
        Ok(files)
    }

    /// Files (descriptors or extents) that two LUNs of `cfg`'s targets are made of, each
    /// reported at the later LUN's path: one file in two LUNs is one disk with two LUNs' worth
    /// of reservations. LUNs whose files cannot be read are left to [`Datastore::validate`].
    pub fn shared_lun_files(&self, cfg: &Config) -> Vec<Problem> {
        validate::shared_lun_files(self, cfg)
    }

    /// Creates `<ds>/<uuid>/` and the link `targets/<uuid> -> ../../<uuid>`.
    pub fn create_target_dir(&self, uuid: &str) -> Result<PathBuf> {
        check_plain_name(uuid)?;
        let dir = self.target_dir(uuid);
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        let link = self.targets_dir().join(uuid);
        if let Err(e) = std::os::unix::fs::symlink(Path::new("..").join("..").join(uuid), &link) {
            let _ = fs::remove_dir(&dir);
            return Err(DatastoreError::Io {
                path: link,
                source: e,
            });
        }
        crate::fsutil::sync_dir(&self.targets_dir())?;
        crate::fsutil::sync_dir(&self.root)?;
        Ok(dir)
    }

    /// Removes a target's directory (which must hold no files any more), then its link: a
    /// directory that cannot go keeps its link, so paths through it still resolve.
    pub fn remove_target_dir(&self, uuid: &str) -> Result<()> {
        check_plain_name(uuid)?;
        let gone = |path: PathBuf, result: io::Result<()>| match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DatastoreError::Io { path, source }),
        };
        let dir = self.target_dir(uuid);
        gone(dir.clone(), fs::remove_dir(&dir))?;
        let link = self.targets_dir().join(uuid);
        gone(link.clone(), fs::remove_file(&link))
    }

    /// Checks everything `vitctl config validate` promises; an empty list means all holds.
    pub fn validate(&self) -> Vec<Problem> {
        validate::validate(self)
    }
}

/// A single path component with no separators or dot names.
fn check_plain_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(DatastoreError::UnsafePath {
            path: name.to_string(),
            why: "not a plain name".into(),
        });
    }
    Ok(())
}

/// Reads a whole file, refusing one larger than `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = File::open(path).map_err(io_err(path))?;
    let mut text = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut text)
        .map_err(io_err(path))?;
    if text.len() as u64 > limit {
        return Err(DatastoreError::Invalid(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(text)
}

/// The datastore used when none is named: `$VIT_DATASTORE` is handled by the callers;
/// this is `$XDG_DATA_HOME/vit`, else `$HOME/.local/share/vit`, else `./vit-data`.
pub fn default_root() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("vit");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/vit");
    }
    PathBuf::from("vit-data")
}

/// Reads the reservations a LUN saved with APTPL at `pr_file`
/// ([`crate::vmdk::reservations_path`] of its descriptor): `None` when there is none; an error
/// for a file that exists but cannot be read or decoded ([`crate::scsi::pr::PrState::read_saved`]).
/// vitd starts a LUN from it (and keeps the LUN offline on an error); `config validate` reports
/// the error with [`saved_reservations_unreadable`].
pub fn load_saved_reservations(pr_file: &Path) -> io::Result<Option<crate::scsi::pr::PrState>> {
    match File::open(pr_file) {
        Ok(f) => crate::scsi::pr::PrState::read_saved(f).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why a LUN whose saved reservations at `pr_file` cannot be read back (`e`) is not served: the
/// words vitd logs when it keeps the LUN offline and `config validate` reports.
pub fn saved_reservations_unreadable(pr_file: &Path, e: &io::Error) -> String {
    format!(
        "its saved persistent reservations {} cannot be read back ({e}); it is not served \
         without them, since a node they fenced out could then write: restore the file, or \
         remove it to start the LUN with no reservations",
        pr_file.display()
    )
}

/// The components of a LUN `path` from vit.conf, TARGET-UUID first, when its form alone allows
/// it (relative, no `..` or `.` component, at least TARGET-UUID/FILE); what is on disk is
/// [`Datastore::resolve_lun_path`]'s to check. A form refused is a fault of vit.conf itself.
pub fn lun_path_parts(path: &str) -> Result<Vec<&std::ffi::OsStr>> {
    let unsafe_path = |why: &str| DatastoreError::UnsafePath {
        path: path.to_string(),
        why: why.to_string(),
    };
    let mut parts = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(s) => parts.push(s),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_path("it is absolute"));
            }
            Component::ParentDir => return Err(unsafe_path("it has a `..` component")),
            Component::CurDir => return Err(unsafe_path("it has a `.` component")),
        }
    }
    match parts.len() {
        0 => Err(unsafe_path("it is empty")),
        1 => Err(unsafe_path("it must be TARGET-UUID/FILE.vmdk")),
        _ => Ok(parts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::initial_config;

    fn ds() -> (tempfile::TempDir, Datastore) {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        assert!(
            ds.create_home_object(&initial_config("127.0.0.1:3260"))
                .unwrap()
        );
        (dir, ds)
    }

    /// The command a missing datastore's or home object's message gives can be pasted into a
    /// shell as it is, a path with a space or a quote in it too.
    #[test]
    fn the_command_that_makes_a_datastore_names_it_as_a_shell_reads_it() {
        for (root, word) in [
            ("/srv/vit", "/srv/vit"),
            ("/srv/my vit", "'/srv/my vit'"),
            ("/srv/bob's", "'/srv/bob'\\''s'"),
        ] {
            let command = format!("`vitctl --datastore {word} homeobject create`");
            for e in [
                DatastoreError::NoDatastore(root.into()),
                DatastoreError::NoHomeObject(root.into()),
            ] {
                let msg = e.to_string();
                assert!(msg.contains(&command), "{msg}");
            }
        }
    }

    /// A datastore path that is a symbolic link to nothing (a mount not there) is not called a
    /// missing directory to make: `homeobject create` fails on the link; the message names where it
    /// points.
    #[test]
    fn a_datastore_link_to_nothing_is_not_called_missing() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("ds");
        std::os::unix::fs::symlink("/nonexistent-vit-mount/ds", &link).unwrap();
        let e = Datastore::open(&link).unwrap_err().to_string();
        assert!(!e.contains("homeobject create"), "{e}");
        assert!(e.contains("/nonexistent-vit-mount/ds"), "{e}");
    }

    /// Something that is no file at etc/vitd.lock (here a FIFO, whose plain open waits for a
    /// writer) blocks neither vitctl's probe nor vitd's start.
    #[test]
    fn the_served_mark_never_waits_on_what_is_at_its_path() {
        let (_dir, ds) = ds();
        let fifo =
            std::ffi::CString::new(ds.served_lock_path().into_os_string().into_encoded_bytes())
                .unwrap();
        // SAFETY: `fifo` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let served = ds.served();
            let marked = ds.mark_served().is_ok();
            let _ = tx.send((served, marked));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert!(matches!(got, Ok((false, _))), "{got:?}");
    }

    #[test]
    fn lun_paths_stay_inside_the_datastore() {
        let (_dir, ds) = ds();
        ds.create_target_dir("t1").unwrap();
        let ok = ds.resolve_lun_path("t1/a.vmdk").unwrap();
        assert_eq!(ok, ds.root().join("t1/a.vmdk"));
        for (bad, why) in [
            ("/etc/passwd", "absolute"),
            ("t1/../../x.vmdk", ".."),
            ("./t1/a.vmdk", "`.`"),
            ("t1", "TARGET-UUID/FILE"),
            ("", "empty"),
            ("t2/a.vmdk", "not a target link"),
        ] {
            let e = ds.resolve_lun_path(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        // A targets/ link that points anywhere but ../../<name> is refused.
        std::os::unix::fs::symlink("/tmp", ds.targets_dir().join("evil")).unwrap();
        let e = ds.resolve_lun_path("evil/a.vmdk").unwrap_err().to_string();
        assert!(e.contains("points to /tmp"), "{e}");
        // So is a symlink further down.
        std::os::unix::fs::symlink("/etc/passwd", ds.root().join("t1/link.vmdk")).unwrap();
        let e = ds.resolve_lun_path("t1/link.vmdk").unwrap_err().to_string();
        assert!(e.contains("is a symlink"), "{e}");
    }

    #[test]
    fn commit_counts_generations_and_refuses_invalid_models() {
        let (_dir, ds) = ds();
        let lock = ds.lock().unwrap();
        let mut cfg = ds.load_config().unwrap();
        assert_eq!(ds.commit(&lock, &mut cfg).unwrap(), 2);
        assert_eq!(ds.commit(&lock, &mut cfg).unwrap(), 3);
        let before = std::fs::read(ds.config_path()).unwrap();
        cfg.targets.push(crate::config::Target {
            name: "not an iqn".into(),
            pos: Default::default(),
            alias: None,
            auth_group: Some(crate::config::Named::new("missing-group")),
            auth: Default::default(),
            portal_groups: vec![],
            ports: vec![],
            redirect: None,
            options: vec![],
            luns: vec![],
        });
        assert!(matches!(
            ds.commit(&lock, &mut cfg),
            Err(DatastoreError::Refused(_))
        ));
        assert_eq!(
            std::fs::read(ds.config_path()).unwrap(),
            before,
            "a refused commit writes nothing"
        );
        assert_eq!(ds.load_config().unwrap().generation, Some(3));
    }

    #[test]
    fn broken_config_is_reported_with_its_location() {
        let (_dir, ds) = ds();
        std::fs::write(
            ds.config_path(),
            "generation 3\ntarget iqn.2026-11.io.vit:x {\n  bogus 1\n}\n",
        )
        .unwrap();
        let e = ds.load_config().unwrap_err().to_string();
        let want = format!("{}:3:3:", ds.config_path().display());
        assert!(e.starts_with(&want), "{e}");
    }

    #[test]
    fn a_config_over_the_limit_is_reported_at_a_place() {
        let (_dir, ds) = ds();
        let mut text = std::fs::read(ds.config_path()).unwrap();
        text.resize(usize::try_from(MAX_CONFIG_BYTES).unwrap() + 1, b'#');
        std::fs::write(ds.config_path(), &text).unwrap();
        let want = format!(
            "{}:1:1: file is more than the limit of {MAX_CONFIG_BYTES} bytes",
            ds.config_path().display()
        );
        assert_eq!(ds.load_config().unwrap_err().to_string(), want);
        let problems: Vec<String> = ds.validate().iter().map(ToString::to_string).collect();
        assert_eq!(problems, [want]);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_reported_where_they_stand() {
        let (_dir, ds) = ds();
        let mut text = b"generation 3\n# caf\xc3\xa9 \xff\nportal-group p { }\n".to_vec();
        std::fs::write(ds.config_path(), &text).unwrap();
        let want = format!(
            "{}:2:8: byte 0xff is not UTF-8 (vit.conf is UTF-8 text)",
            ds.config_path().display()
        );
        assert_eq!(ds.load_config().unwrap_err().to_string(), want);
        let problems: Vec<String> = ds.validate().iter().map(ToString::to_string).collect();
        assert_eq!(problems, [want]);
        // A sequence cut short at the end of the file, after a byte order mark.
        text = b"\xef\xbb\xbfgeneration 3 \xc3".to_vec();
        std::fs::write(ds.config_path(), &text).unwrap();
        let e = ds.load_config().unwrap_err().to_string();
        assert!(
            e.ends_with(":1:14: byte 0xc3 is not UTF-8 (vit.conf is UTF-8 text)"),
            "{e}"
        );
    }

    /// A size that is not a whole number of the LUN's blocks stops vitd at start (runtime.rs,
    /// `open_lun`), so validate names it, where vitd does.
    #[test]
    fn a_size_that_is_not_whole_blocks_is_reported() {
        let (_dir, ds) = ds();
        std::fs::write(
            ds.config_path(),
            "generation 3\ntarget iqn.2026-11.io.vit:x {\n  lun 0 {\n    backend ramdisk\n    \
             size 1000B\n  }\n  lun 1 {\n    backend ramdisk\n    blocksize 4096\n    \
             size 6144B\n  }\n  lun 2 {\n    backend ramdisk\n    blocksize 4096\n    \
             size 8192B\n  }\n}\n",
        )
        .unwrap();
        let file = ds.config_path().display().to_string();
        let problems: Vec<String> = ds.validate().iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                format!(
                    "{file}:3:9: target iqn.2026-11.io.vit:x LUN 0: size 1000 is not a multiple \
                     of the block size 512"
                ),
                format!(
                    "{file}:9:15: target iqn.2026-11.io.vit:x LUN 1: size 6144 is not a multiple \
                     of the block size 4096"
                ),
            ]
        );
    }

    /// What vitd cannot serve is named at its place in vit.conf by `config validate` and by
    /// the load vitd starts with (`load_config`, before `runtime::build`): a memory LUN of no
    /// blocks, a LUN id given twice in one target. Nothing is written.
    #[test]
    fn a_ramdisk_of_size_0_and_a_lun_id_given_twice_are_reported_where_they_stand() {
        let (_dir, ds) = ds();
        let text = "generation 3\ntarget iqn.2026-11.io.vit:x {\n  lun 0 {\n    backend ramdisk\n    \
                    size 0\n  }\n  lun 1 {\n    backend ramdisk\n    size 1M\n  }\n  \
                    lun 1 {\n    backend ramdisk\n    size 1M\n  }\n}\n";
        std::fs::write(ds.config_path(), text).unwrap();
        let file = ds.config_path().display().to_string();
        let want = [
            format!("{file}:5:10: size 0: a ramdisk LUN needs at least one block"),
            format!("{file}:11:7: LUN 1 is defined twice in this target (first at 7:7)"),
        ];
        let problems: Vec<String> = ds.validate().iter().map(ToString::to_string).collect();
        assert_eq!(problems, want);
        match ds.load_config() {
            Err(DatastoreError::Config(errors)) => {
                let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
                assert_eq!(got, want);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_to_string(ds.config_path()).unwrap(), text);
    }

    /// A VMDK descriptor that gives no sectors is no disk: validate names it at the LUN's path.
    #[test]
    fn a_vmdk_of_no_sectors_is_reported_at_its_path() {
        let (_dir, ds) = ds();
        let tdir = ds.create_target_dir("u").unwrap();
        let desc = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                    createType=\"monolithicFlat\"\nRW 0 FLAT \"z-flat.vmdk\" 0\n";
        std::fs::write(tdir.join("z.vmdk"), desc).unwrap();
        std::fs::write(tdir.join("z-flat.vmdk"), b"").unwrap();
        let text =
            "generation 3\ntarget iqn.2026-11.io.vit:x {\n  lun 0 {\n    path u/z.vmdk\n  }\n}\n";
        std::fs::write(ds.config_path(), text).unwrap();
        let problems: Vec<String> = ds.validate().iter().map(ToString::to_string).collect();
        let want = format!(
            "{}:4:10: target iqn.2026-11.io.vit:x LUN 0: ",
            ds.config_path().display()
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(&want) && problems[0].contains("0 sectors"),
            "{problems:?}"
        );
        assert_eq!(std::fs::read_to_string(ds.config_path()).unwrap(), text);
        assert_eq!(std::fs::read_to_string(tdir.join("z.vmdk")).unwrap(), desc);
    }
}
