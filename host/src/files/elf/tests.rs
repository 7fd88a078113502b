//! Tests of the ELF pre-flight check and of reading a plugin's name note: on real shared
//! libraries, on tiny hand-made ELF files, and on broken or random bytes.

use super::*;

fn a_shared_library() -> Vec<u8> {
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libc is installed");
    std::fs::read(libc).unwrap()
}

#[test]
fn accepts_a_real_shared_library() {
    check(&a_shared_library()).unwrap();
}

#[test]
fn refuses_truncated_and_foreign_files() {
    let lib = a_shared_library();
    assert!(check(&lib[..4096])
        .unwrap_err()
        .starts_with("truncated: segment"));
    assert!(check(&lib[..40])
        .unwrap_err()
        .contains("shorter than an ELF header"));
    assert!(check(b"#!/bin/sh\n").unwrap_err().contains("no ELF header"));
    assert!(check(b"").unwrap_err().contains("no ELF header"));
    let mut exec = lib.clone();
    exec[16] = 2; // ET_EXEC
    assert!(check(&exec).unwrap_err().contains("not a shared library"));
    let mut foreign = lib;
    foreign[18] = 40; // ARM
    assert!(check(&foreign).unwrap_err().contains("another machine"));
}

/// A note as in an ELF file: header, owner padded to 4, descriptor padded to 4.
fn elf_note(owner: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(owner.len() as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    for part in [owner, desc] {
        out.extend_from_slice(part);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

fn name_note(name: &str) -> Vec<u8> {
    elf_note(b"plugin-host\0", note::TYPE_PLUGIN_NAME, name.as_bytes())
}

/// A minimal 64-bit little-endian shared object: the ELF header, then (if `segment`) one
/// `PT_NOTE` program header and its notes, then (if `section`) the notes of one
/// `SHT_NOTE` section and a section header table (a null section and that one).
fn tiny_elf(segment: Option<&[u8]>, section: Option<&[u8]>) -> Vec<u8> {
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little-endian
    elf[6] = 1; // EV_CURRENT
    elf[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
    elf[18..20].copy_from_slice(&MACHINE.to_le_bytes());
    elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    if let Some(notes) = segment {
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let mut phdr = vec![0u8; 56];
        phdr[..4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        phdr[4..8].copy_from_slice(&4u32.to_le_bytes()); // PF_R
        phdr[8..16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        phdr[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes()); // p_filesz
        phdr[40..48].copy_from_slice(&(notes.len() as u64).to_le_bytes()); // p_memsz
        phdr[48..56].copy_from_slice(&4u64.to_le_bytes()); // p_align
        elf.extend_from_slice(&phdr);
        elf.extend_from_slice(notes);
    }
    if let Some(notes) = section {
        let offset = elf.len() as u64;
        elf.extend_from_slice(notes);
        elf.resize(elf.len().next_multiple_of(8), 0);
        let shoff = elf.len() as u64;
        elf.extend_from_slice(&[0u8; 64]); // SHN_UNDEF
        let mut shdr = vec![0u8; 64];
        shdr[4..8].copy_from_slice(&7u32.to_le_bytes()); // SHT_NOTE
        shdr[8..16].copy_from_slice(&2u64.to_le_bytes()); // SHF_ALLOC
        shdr[24..32].copy_from_slice(&offset.to_le_bytes());
        shdr[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        shdr[48..56].copy_from_slice(&4u64.to_le_bytes());
        elf.extend_from_slice(&shdr);
        elf[40..48].copy_from_slice(&shoff.to_le_bytes()); // e_shoff
        elf[60..62].copy_from_slice(&2u16.to_le_bytes()); // e_shnum
    }
    elf
}

/// Both readers agree on `bytes`; returns their answer.
fn both(bytes: &[u8]) -> Option<String> {
    let from_bytes = declared_name(bytes);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, bytes).unwrap();
    let from_file = declared_name_in_file(file.path()).unwrap();
    assert_eq!(from_bytes, from_file);
    from_bytes
}

#[test]
fn reads_the_name_from_a_note_segment_or_section() {
    let notes = name_note("disk-report");
    assert_eq!(
        both(&tiny_elf(Some(&notes), None)).as_deref(),
        Some("disk-report")
    );
    assert_eq!(
        both(&tiny_elf(None, Some(&notes))).as_deref(),
        Some("disk-report")
    );
    // Behind other notes (a build id, as linkers write it first or next to it).
    let mut notes = elf_note(b"GNU\0", 3, &[0xab; 20]);
    notes.extend(name_note("hello"));
    assert_eq!(
        both(&tiny_elf(Some(&notes), Some(&notes))).as_deref(),
        Some("hello")
    );
    // A note in a segment with something else, and the name only in the sections.
    let build_id = elf_note(b"GNU\0", 3, &[0xab; 20]);
    assert_eq!(
        both(&tiny_elf(Some(&build_id), Some(&name_note("x")))).as_deref(),
        Some("x")
    );
}

#[test]
fn reads_exactly_what_the_export_macro_writes() {
    const SIZE: usize = note::size("sysinfo".len());
    let written = note::plugin_note::<SIZE>("sysinfo").0;
    assert_eq!(written.to_vec(), name_note("sysinfo"));
    assert_eq!(
        both(&tiny_elf(Some(&written), None)).as_deref(),
        Some("sysinfo")
    );
}

#[test]
fn no_name_without_a_valid_plugin_host_name_note() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no notes", vec![]),
        (
            "other owner",
            elf_note(b"plugin-hosts\0", note::TYPE_PLUGIN_NAME, b"hello"),
        ),
        (
            "owner prefix",
            elf_note(b"plugin\0", note::TYPE_PLUGIN_NAME, b"hello"),
        ),
        ("other type", elf_note(b"plugin-host\0", 1, b"hello")),
        ("invalid name", name_note("../etc/passwd")),
        ("empty name", name_note("")),
        ("too long a name", name_note(&"x".repeat(65))),
        (
            "not UTF-8",
            elf_note(b"plugin-host\0", note::TYPE_PLUGIN_NAME, &[0xff, 0xfe]),
        ),
    ];
    for (what, notes) in cases {
        assert_eq!(both(&tiny_elf(Some(&notes), Some(&notes))), None, "{what}");
    }
    assert_eq!(both(&a_shared_library()), None, "libc has no such note");
    assert_eq!(both(b""), None);
    assert_eq!(both(b"#!/bin/sh\necho hello\n"), None);
    let mut big_endian = tiny_elf(Some(&name_note("hello")), None);
    big_endian[5] = 2;
    assert_eq!(both(&big_endian), None);
    // A NUL after the name, as another writer might put, is tolerated.
    let with_nul = elf_note(b"plugin-host\0", note::TYPE_PLUGIN_NAME, b"hello\0");
    assert_eq!(
        both(&tiny_elf(Some(&with_nul), None)).as_deref(),
        Some("hello")
    );
}

#[test]
fn truncated_files_and_huge_sizes_give_no_name() {
    let elf = tiny_elf(Some(&name_note("hello")), Some(&name_note("hello")));
    let note_end = 120 + name_note("hello").len();
    for cut in 0..elf.len() {
        let name = both(&elf[..cut]);
        if cut < note_end {
            // The segment is cut: only the sections could still name it, and their
            // table is at the very end.
            assert_eq!(name, None, "cut at {cut}");
        }
    }
    assert_eq!(both(&elf).as_deref(), Some("hello"));

    let patched = |at: usize, value: &[u8]| {
        let mut bytes = tiny_elf(Some(&name_note("hello")), None);
        bytes[at..at + value.len()].copy_from_slice(value);
        declared_name(&bytes)
    };
    let max32 = u32::MAX.to_le_bytes();
    let max64 = u64::MAX.to_le_bytes();
    assert_eq!(patched(120, &max32), None, "namesz");
    assert_eq!(patched(124, &max32), None, "descsz");
    assert_eq!(
        patched(124, &9u32.to_le_bytes()),
        None,
        "descsz past the end"
    );
    assert_eq!(patched(64 + 8, &max64), None, "p_offset");
    assert_eq!(patched(64 + 32, &max64), None, "p_filesz");
    assert_eq!(patched(32, &max64), None, "e_phoff");
    assert_eq!(patched(56, &u16::MAX.to_le_bytes()), None, "e_phnum");
    assert_eq!(patched(54, &64u16.to_le_bytes()), None, "e_phentsize");
    let mut bytes = tiny_elf(None, Some(&name_note("hello")));
    let shoff = u64_at(&bytes, 40).unwrap() as usize;
    bytes[shoff + 64 + 32..shoff + 64 + 40].copy_from_slice(&max64);
    assert_eq!(both(&bytes), None, "sh_size");
    bytes[40..48].copy_from_slice(&max64);
    assert_eq!(both(&bytes), None, "e_shoff");
}

#[test]
fn only_the_start_of_a_large_note_segment_is_read() {
    let mut notes = name_note("hello");
    let filler = elf_note(b"filler\0", 1, &[7; 1000]);
    while notes.len() <= MAX_NOTES_BYTES as usize {
        notes.extend_from_slice(&filler);
    }
    assert_eq!(
        both(&tiny_elf(Some(&notes), None)).as_deref(),
        Some("hello")
    );
    let mut late = filler.repeat(notes.len() / filler.len());
    late.extend(name_note("hello"));
    assert_eq!(both(&tiny_elf(Some(&late), None)), None);
}

#[test]
fn a_file_that_cannot_be_opened_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(declared_name_in_file(&dir.path().join("missing.so")).is_err());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = check(&bytes);
        }

        #[test]
        fn reading_the_name_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = declared_name(&bytes);
        }

        #[test]
        fn reading_the_name_never_panics_on_a_mutated_file(
            at in 0usize..400,
            value in any::<u64>(),
            width in 1usize..=8,
            cut in 0usize..400,
        ) {
            let notes = name_note("hello");
            let mut bytes = tiny_elf(Some(&notes), Some(&notes));
            let at = at % bytes.len();
            let end = (at + width).min(bytes.len());
            bytes[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
            bytes.truncate(cut.max(64));
            let name = declared_name(&bytes);
            prop_assert!(name.is_none_or(|name| plugin_api::is_valid_name(&name)));
        }

        #[test]
        fn a_real_library_cut_anywhere_inside_its_segments_is_refused(cut in 0usize..200_000) {
            let lib = a_shared_library();
            let cut = cut % lib.len();
            let needed = last_segment_end(&lib);
            prop_assume!(cut < needed);
            prop_assert!(check(&lib[..cut]).is_err());
        }

        #[test]
        fn never_panics_on_a_mutated_header(at in 0usize..64, value in any::<u64>()) {
            let mut lib = a_shared_library();
            let at = at.min(lib.len() - 8);
            lib[at..at + 8].copy_from_slice(&value.to_le_bytes());
            let _ = check(&lib);
        }
    }

    /// The end of the last segment, read independently of `check`.
    fn last_segment_end(lib: &[u8]) -> usize {
        let u64_at = |at: usize| u64::from_le_bytes(lib[at..at + 8].try_into().unwrap()) as usize;
        let u16_at = |at: usize| u16::from_le_bytes([lib[at], lib[at + 1]]) as usize;
        let (phoff, phnum) = (u64_at(32), u16_at(56));
        (0..phnum)
            .map(|i| phoff + i * 56)
            .map(|at| u64_at(at + 8) + u64_at(at + 32))
            .chain([phoff + phnum * 56])
            .max()
            .unwrap()
    }
}
