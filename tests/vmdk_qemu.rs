//! qemu-img reads our LUNs, and we read qemu-img's: descriptors, capacities, extent maps, data.
//! Every test prints a note and passes when qemu-img is not installed.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vit::vmdk::{self, CreateOptions, Descriptor, ExtentMap, Op, SegmentKind, VmdkError};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn have_qemu_img() -> bool {
    let found = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("note: qemu-img not found; skipping this test");
    }
    found
}

fn qemu_img(dir: &Path, args: &[&str]) -> Output {
    Command::new("qemu-img")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run qemu-img")
}

/// `qemu-img create -f vmdk -o subformat=SUBFORMAT NAME SIZE` in `dir`; the descriptor's path.
fn qemu_create(dir: &Path, subformat: &str, name: &str, size: &str) -> PathBuf {
    let out = qemu_img(
        dir,
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={subformat}"),
            name,
            size,
        ],
    );
    assert!(
        out.status.success(),
        "qemu-img create {subformat} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join(name)
}

fn qemu_info(descriptor: &Path) -> serde_json::Value {
    let out = qemu_img(
        descriptor.parent().unwrap(),
        &["info", "--output=json", descriptor.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "qemu-img info {}: {}",
        descriptor.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("qemu-img info JSON")
}

/// `qemu-img compare` exit status: 0 identical, 1 different.
fn qemu_compare(vmdk: &Path, raw: &Path) -> i32 {
    let out = qemu_img(
        vmdk.parent().unwrap(),
        &[
            "compare",
            "-f",
            "vmdk",
            "-F",
            "raw",
            vmdk.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let code = out.status.code().expect("qemu-img exited normally");
    assert!(
        code == 0 || code == 1,
        "qemu-img compare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    code
}

fn split() -> CreateOptions {
    CreateOptions {
        preallocate: false,
        split_2gb: true,
    }
}

/// Writes `data` at virtual `offset` of the LUN through the extent map; returns the segments.
fn write_through_map(descriptor: &Path, offset: u64, data: &[u8]) -> usize {
    let dir = descriptor.parent().unwrap();
    let d = vmdk::check(descriptor).unwrap();
    let map = ExtentMap::new(&d);
    let mut done = 0usize;
    let mut segments = 0;
    for seg in map.map(offset, data.len() as u64, Op::Write).unwrap() {
        assert_eq!(seg.kind, SegmentKind::Flat);
        let name = d.extents()[seg.extent].file.as_deref().unwrap();
        let file = vmdk::open_extent(dir, name, true, false).unwrap();
        let n = usize::try_from(seg.len).unwrap();
        file.write_all_at(&data[done..done + n], seg.file_offset)
            .unwrap();
        done += n;
        segments += 1;
    }
    assert_eq!(done, data.len());
    segments
}

fn raw_image(path: &Path, size: u64) {
    fs::File::create(path).unwrap().set_len(size).unwrap();
}

fn write_raw(path: &Path, offset: u64, data: &[u8]) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(data, offset)
        .unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn dir_listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn qemu_monolithic_flat_loads() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = qemu_create(dir.path(), "monolithicFlat", "x.vmdk", "64M");
    let d = vmdk::check(&path).unwrap();
    assert_eq!(d.capacity_bytes(), 64 * MIB);
    assert_eq!(d.create_type(), &vmdk::CreateType::MonolithicFlat);
    assert_eq!(d.extents().len(), 1);
    assert_eq!(d.extents()[0].file.as_deref(), Some("x-flat.vmdk"));
    let map = ExtentMap::new(&d);
    assert_eq!(map.map(64 * MIB - 512, 512, Op::Read).unwrap().count(), 1);
    assert!(map.map(64 * MIB - 512, 513, Op::Read).is_err());
}

#[test]
fn qemu_twogb_flat_loads_and_splits_at_the_extent_boundary() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = qemu_create(dir.path(), "twoGbMaxExtentFlat", "y.vmdk", "5G");
    let d = vmdk::check(&path).unwrap();
    assert_eq!(d.capacity_bytes(), 5 * GIB);
    assert_eq!(d.create_type(), &vmdk::CreateType::TwoGbMaxExtentFlat);
    let sizes: Vec<u64> = d.extents().iter().map(|e| e.sectors * 512).collect();
    // qemu's extent size is the one `create` uses for split LUNs.
    assert_eq!(
        sizes,
        [vmdk::TWO_GB_EXTENT_BYTES, vmdk::TWO_GB_EXTENT_BYTES, GIB]
    );
    let map = ExtentMap::new(&d);
    let segs: Vec<_> = map.map(2 * GIB - 512, 1024, Op::Read).unwrap().collect();
    assert_eq!(segs.len(), 2);
    assert_eq!(
        (segs[0].extent, segs[0].file_offset, segs[0].len),
        (0, 2 * GIB - 512, 512)
    );
    assert_eq!(
        (segs[1].extent, segs[1].file_offset, segs[1].len),
        (1, 0, 512)
    );
}

#[test]
fn qemu_reads_the_size_of_our_luns() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "mono",
            64 * MIB,
            CreateOptions::default(),
            "monolithicFlat",
            1,
        ),
        (
            "bigmono",
            3 * GIB,
            CreateOptions::default(),
            "monolithicFlat",
            1,
        ),
        ("small-split", 64 * MIB, split(), "twoGbMaxExtentFlat", 1),
        (
            "big-split",
            5 * GIB + 4096,
            split(),
            "twoGbMaxExtentFlat",
            3,
        ),
    ];
    for (stem, size, opts, create_type, extents) in cases {
        let path = vmdk::create(dir.path(), stem, size, &opts).unwrap();
        let info = qemu_info(&path);
        assert_eq!(info["format"], "vmdk", "{stem}");
        assert_eq!(info["virtual-size"], size, "{stem}");
        let specific = &info["format-specific"]["data"];
        assert_eq!(specific["create-type"], create_type, "{stem}");
        assert_eq!(
            specific["extents"].as_array().unwrap().len(),
            extents,
            "{stem}"
        );
        assert_eq!(specific["parent-cid"], 0xffff_ffffu64, "{stem}");
    }
}

#[test]
fn qemu_compare_sees_bytes_written_through_the_map() {
    if !have_qemu_img() {
        return;
    }
    for (stem, size, opts) in [
        ("mono", 64 * MIB, CreateOptions::default()),
        ("split", 2 * GIB + 64 * MIB, split()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = vmdk::create(dir.path(), stem, size, &opts).unwrap();
        let raw = dir.path().join("raw.img");
        raw_image(&raw, size);
        let mut writes = vec![
            (0u64, pattern(4096, 1)),
            (size / 2 + 7, pattern(10_000, 2)),
            (size - 512, pattern(512, 3)),
        ];
        if opts.split_2gb {
            // Spans the f001/f002 boundary at 2 GiB.
            writes.push((2 * GIB - 3000, pattern(8192, 4)));
        }
        for (offset, data) in &writes {
            let segments = write_through_map(&path, *offset, data);
            let spans = *offset < 2 * GIB && offset + data.len() as u64 > 2 * GIB;
            assert_eq!(segments, if spans { 2 } else { 1 }, "{stem} at {offset}");
            write_raw(&raw, *offset, data);
        }
        assert_eq!(qemu_compare(&path, &raw), 0, "{stem}: identical");
        // One byte different, just after the extent boundary for the split LUN.
        let probe = if opts.split_2gb { 2 * GIB + 1 } else { 4095 };
        write_raw(&raw, probe, &[0xee]);
        assert_eq!(qemu_compare(&path, &raw), 1, "{stem}: different");
    }
}

#[test]
fn grow_is_seen_by_qemu_and_keeps_data() {
    if !have_qemu_img() {
        return;
    }
    for (stem, size, new_size, opts) in [
        ("mono", 64 * MIB, 128 * MIB, CreateOptions::default()),
        ("split", GIB, 5 * GIB, split()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = vmdk::create(dir.path(), stem, size, &opts).unwrap();
        let data = pattern(4096, 9);
        write_through_map(&path, size - 4096, &data);
        vmdk::grow(&path, new_size, false).unwrap();
        let info = qemu_info(&path);
        assert_eq!(info["virtual-size"], new_size, "{stem}");
        let d = vmdk::check(&path).unwrap();
        assert_eq!(d.capacity_bytes(), new_size);
        let raw = dir.path().join("raw.img");
        raw_image(&raw, new_size);
        write_raw(&raw, size - 4096, &data);
        assert_eq!(qemu_compare(&path, &raw), 0, "{stem}: data kept");
        // Writing beyond the old end works through the new layout.
        let tail = pattern(1024, 5);
        write_through_map(&path, new_size - 1024, &tail);
        write_raw(&raw, new_size - 1024, &tail);
        assert_eq!(qemu_compare(&path, &raw), 0, "{stem}: new space");
    }
}

#[test]
fn shrink_is_refused_and_files_unchanged() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = vmdk::create(dir.path(), "s", 3 * GIB, &split()).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    let before = dir_listing(dir.path());
    let err = vmdk::grow(&path, GIB, false).unwrap_err();
    match &err {
        VmdkError::Shrink {
            current, requested, ..
        } => assert_eq!((*current, *requested), (3 * GIB, GIB)),
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("3221225472") && msg.contains("1073741824"),
        "{msg}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), text);
    assert_eq!(dir_listing(dir.path()), before);
    assert_eq!(qemu_info(&path)["virtual-size"], 3 * GIB);
}

#[test]
fn qemu_sparse_vmdk_is_refused_with_a_clear_error() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 2] = [
        ("monolithicSparse", "KDMV"),
        ("twoGbMaxExtentSparse", "twoGbMaxExtentSparse"),
    ];
    for (subformat, expect) in cases {
        let path = qemu_create(dir.path(), subformat, &format!("{subformat}.vmdk"), "64M");
        let err = vmdk::load(&path).unwrap_err();
        assert!(err.is_unsupported_format(), "{subformat}: {err}");
        assert!(err.to_string().contains(expect), "{subformat}: {err}");
    }
}

#[test]
fn descriptor_we_print_for_qemu_luns_is_read_back_by_qemu() {
    if !have_qemu_img() {
        return;
    }
    // Parse qemu's descriptor, print it, and let qemu read the printed one.
    let dir = tempfile::tempdir().unwrap();
    let path = qemu_create(dir.path(), "twoGbMaxExtentFlat", "q.vmdk", "3G");
    let d: Descriptor = vmdk::load(&path).unwrap();
    fs::write(&path, d.to_string()).unwrap();
    assert_eq!(qemu_info(&path)["virtual-size"], 3 * GIB);
    assert_eq!(vmdk::load(&path).unwrap(), d);
}
