//! Tests of staging: what is copied, what is hashed, and what is left behind.

use super::*;

fn libc_path() -> &'static Path {
    [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.exists())
    .expect("libc is installed")
}

#[test]
fn staging_copies_hashes_and_cleans_up() {
    let copies = tempfile::tempdir().unwrap();
    let options = LoadOptions {
        allow_insecure_permissions: true,
        ..LoadOptions::default()
    };
    let staged = stage(libc_path(), &options, copies.path(), &|_| true).unwrap();
    let original = fs::read(libc_path()).unwrap();
    assert_eq!(fs::read(&staged.copy_path).unwrap(), original);
    assert_eq!(
        staged.digest.sha256_now(),
        Some(Digest::sha256_of(&original))
    );
    assert_eq!(staged.digest.content(), Digest::content_of(&original));
    assert_eq!(staged.declared, None, "libc declares no plugin");
    // Without a pin, the SHA-256 is computed when asked for.
    let later = stage(libc_path(), &options, copies.path(), &|_| false).unwrap();
    assert_eq!(later.digest.sha256(), Some(Digest::sha256_of(&original)));
    let copy = staged.copy_path.clone();
    drop(staged);
    assert!(!copy.exists());
}

#[test]
fn a_truncated_file_is_refused_and_leaves_no_copy_behind() {
    let dir = tempfile::tempdir().unwrap();
    let copies = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.so");
    fs::write(&cut, &fs::read(libc_path()).unwrap()[..8192]).unwrap();
    let staged = stage(&cut, &LoadOptions::default(), copies.path(), &|_| false).unwrap();
    let err = staged.check_structure(&cut).unwrap_err();
    assert_eq!(err.kind(), LoadErrorKind::NotALibrary);
    assert!(err.message().starts_with("truncated: segment"), "{err}");
    drop(staged);
    assert_eq!(fs::read_dir(copies.path()).unwrap().count(), 0);
}

/// A copy of libc in a directory of its own, to stage and then change.
fn watched_copy() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.so");
    let original = fs::read(libc_path()).unwrap();
    fs::write(&file, &original).unwrap();
    (dir, file, original)
}

fn insecure() -> LoadOptions {
    LoadOptions {
        allow_insecure_permissions: true,
        ..LoadOptions::default()
    }
}

#[test]
fn a_pin_hashes_the_bytes_copied_not_the_file_rewritten_after_the_lease() {
    // Defect 16c: the SHA-256 a pin compares was computed over the watched file's
    // mapping after its lease was released, so a writer could change what the pin
    // checked after the copy that is loaded was made.
    let (_dir, file, original) = watched_copy();
    let copies = tempfile::tempdir().unwrap();
    after_lease::set(|path| {
        let rewritten: Vec<u8> = fs::read(path).unwrap().iter().map(|b| !b).collect();
        // In place, as `cp` does: same inode, same length, other bytes.
        let mut writer = OpenOptions::new().write(true).open(path).unwrap();
        io::Write::write_all(&mut writer, &rewritten).unwrap();
    });
    let staged = stage(&file, &insecure(), copies.path(), &|_| true).unwrap();
    assert!(!after_lease::pending(), "staging held no read lease here");
    assert_ne!(
        fs::read(&file).unwrap(),
        original,
        "the writer changed the file"
    );
    let copied = fs::read(&staged.copy_path).unwrap();
    assert_eq!(
        copied, original,
        "the copy is the version read under the lease"
    );
    assert_eq!(
        staged.digest.sha256_now(),
        Some(Digest::sha256_of(&copied)),
        "the pinned SHA-256 is not the one of the bytes copied (and loaded)"
    );
}

#[test]
fn a_pin_survives_the_watched_file_truncated_after_the_lease() {
    // Defect 16c: hashing the watched file's mapping after the lease was released died
    // of SIGBUS when a writer truncated the file first.
    let (_dir, file, original) = watched_copy();
    let copies = tempfile::tempdir().unwrap();
    after_lease::set(|path| {
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap();
    });
    let staged = stage(&file, &insecure(), copies.path(), &|_| true).unwrap();
    assert!(!after_lease::pending(), "staging held no read lease here");
    assert_eq!(
        fs::metadata(&file).unwrap().len(),
        0,
        "the writer truncated it"
    );
    assert_eq!(
        staged.digest.sha256_now(),
        Some(Digest::sha256_of(&original))
    );
}
