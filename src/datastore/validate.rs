//! `vitctl config validate`: the config's own checks plus everything on disk it refers to.

use super::Datastore;
use crate::config::{self, Backend, Config, ConfigError, LunBody, LunRef, Pos, Target};
use std::collections::HashMap;
use std::path::PathBuf;

/// A validation problem, located in vit.conf (file, line, column) even when the fault is on disk.
pub type Problem = ConfigError;

/// The body of a target's LUN, following `lun N NAME` to the global `lun NAME { }`.
pub fn lun_body<'a>(cfg: &'a Config, lun: &'a LunRef) -> Option<&'a LunBody> {
    match lun {
        LunRef::Inline(body) => Some(body),
        LunRef::Named(n) => cfg.luns.iter().find(|l| l.name == n.name).map(|l| &l.body),
    }
}

pub(super) fn validate(ds: &Datastore) -> Vec<Problem> {
    let file = ds.config_path().display().to_string();
    let at = |pos: Pos, msg: String| ConfigError {
        file: file.clone(),
        line: pos.line,
        col: pos.col,
        msg,
    };
    let text = match ds.read_config_text() {
        Ok(t) => t,
        Err(super::DatastoreError::Config(errors)) => return errors,
        Err(e) => return vec![at(Pos::default(), e.to_string())],
    };
    let cfg = match config::load(&text, &file) {
        Ok(c) => c,
        Err(errors) => return errors,
    };
    let mut problems = shared_lun_files(ds, &cfg);
    for target in &cfg.targets {
        check_target_link(ds, target, &mut |pos, msg| problems.push(at(pos, msg)));
        for tl in &target.luns {
            let Some(body) = lun_body(&cfg, &tl.lun) else {
                continue;
            };
            let mut report = |pos: Pos, msg: String| {
                problems.push(at(
                    pos,
                    format!("target {} LUN {}: {msg}", target.name, tl.id),
                ))
            };
            check_lun(ds, body, tl.pos, &mut report);
        }
    }
    problems.sort_by_key(|p| (p.line, p.col));
    problems
}

/// See [`Datastore::shared_lun_files`].
pub(super) fn shared_lun_files(ds: &Datastore, cfg: &Config) -> Vec<Problem> {
    let file = ds.config_path().display().to_string();
    let mut owners: HashMap<PathBuf, (&str, u64, Pos)> = HashMap::new();
    let mut problems = Vec::new();
    for target in &cfg.targets {
        for tl in &target.luns {
            let Some(body) = lun_body(cfg, &tl.lun) else {
                continue;
            };
            let Some(path) = body.path.as_ref() else {
                continue;
            };
            if body.effective_backend() == Backend::Ramdisk {
                continue;
            }
            let Ok(files) = ds.lun_files(&path.name) else {
                continue;
            };
            let pos = match &tl.lun {
                LunRef::Inline(_) => path.pos,
                LunRef::Named(n) => n.pos,
            };
            for f in files {
                match owners.get(&f) {
                    Some((t, id, _)) if *t == target.name && *id == tl.id => {}
                    Some((t, id, first)) => problems.push(ConfigError::at(
                        &file,
                        pos,
                        format!(
                            "target {} LUN {}: {} is also a file of target {t} LUN {id} (at {}:{}); \
                             one disk as two LUNs would keep two sets of reservations",
                            target.name,
                            tl.id,
                            f.display(),
                            first.line,
                            first.col
                        ),
                    )),
                    None => {
                        owners.insert(f, (&target.name, tl.id, pos));
                    }
                }
            }
        }
    }
    problems
}

fn check_target_link(ds: &Datastore, target: &Target, report: &mut dyn FnMut(Pos, String)) {
    let Some(uuid) = target.uuid() else { return };
    let pos = target
        .options
        .iter()
        .find(|o| o.name == "uuid")
        .map_or(target.pos, |o| o.pos);
    let link = ds.targets_dir().join(uuid);
    match std::fs::metadata(&link) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => report(
            pos,
            format!("{} does not resolve to a directory", link.display()),
        ),
        Err(e) => report(pos, format!("{} does not resolve: {e}", link.display())),
    }
}

fn check_lun(ds: &Datastore, body: &LunBody, lun_pos: Pos, report: &mut dyn FnMut(Pos, String)) {
    if body.effective_backend() == Backend::Ramdisk {
        if let Some((size, _)) = body.size {
            block_multiple(body, size, report);
        }
        return;
    }
    let Some(path) = &body.path else {
        if body
            .backend
            .is_some_and(|(b, _)| b == crate::config::Backend::Vmdk)
        {
            report(lun_pos, "a vmdk LUN needs a path".into());
        }
        return;
    };
    let descriptor = match ds.resolve_lun_path(&path.name) {
        Ok(p) => p,
        Err(e) => return report(path.pos, e.to_string()),
    };
    // vitd keeps a LUN whose saved reservations cannot be read back offline.
    let pr_file = crate::vmdk::reservations_path(&descriptor);
    if let Err(e) = super::load_saved_reservations(&pr_file) {
        report(path.pos, super::saved_reservations_unreadable(&pr_file, &e));
    }
    let desc = match crate::vmdk::check(&descriptor) {
        Ok(d) => d,
        Err(e) => return report(path.pos, e.to_string()),
    };
    let capacity = desc.capacity_bytes();
    if let Some((size, pos)) = body.size
        && size != capacity
    {
        report(
            pos,
            format!(
                "size {size} bytes disagrees with {} ({capacity} bytes)",
                descriptor.display()
            ),
        );
    } else {
        block_multiple(body, capacity, report);
    }
}

/// vitd refuses to start with a LUN whose size (`bytes`: its descriptor's, or a memory LUN's in
/// vit.conf) is not a whole number of its blocks; located as vitd locates it.
fn block_multiple(body: &LunBody, bytes: u64, report: &mut dyn FnMut(Pos, String)) {
    let (block_size, pos) = body.blocksize.unwrap_or((512, body.pos));
    if block_size != 0 && !bytes.is_multiple_of(block_size) {
        report(
            pos,
            format!("size {bytes} is not a multiple of the block size {block_size}"),
        );
    }
}
