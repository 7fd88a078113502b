//! A pre-flight check of a plugin file's ELF structure, before `dlopen` sees it.
//!
//! `dlopen` maps a library's segments straight from the file. If the file is shorter than
//! its program headers say (a truncated copy, a half-written download), the mapping still
//! succeeds, and the first touch of a page past the end of the file kills the whole process
//! with SIGBUS. Checking that every segment lies inside the file turns that into an error.
//!
//! It also reads the plugin name a library declares in its `plugin-host` ELF note (written
//! by `export_plugin!`, format in [`plugin_api::note`]), so that the file serving a plugin
//! can be found without `dlopen`-ing every file of a directory.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use plugin_api::note;

/// Checks that `bytes` is a 64-bit little-endian shared object for this machine whose
/// program headers and segments all lie inside it. The error is one line.
#[cfg(test)]
pub(crate) fn check(bytes: &[u8]) -> Result<(), String> {
    check_head(bytes, bytes.len() as u64)
}

/// [`check`] for a file of `len` bytes that starts with `bytes` (its first 64 KiB, say):
/// the ELF header and the program headers must be inside `bytes`, the segments inside `len`.
pub(crate) fn check_head(bytes: &[u8], len: u64) -> Result<(), String> {
    const EHDR_SIZE: usize = 64;
    const PHDR_SIZE: usize = 56;
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err("not a shared library: no ELF header".into());
    }
    if bytes.len() < EHDR_SIZE {
        return Err(format!(
            "truncated: {len} bytes, shorter than an ELF header"
        ));
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u64_at = |at: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    const ET_DYN: u16 = 3;
    if u16_at(16) != ET_DYN {
        return Err("an ELF file, but not a shared library".into());
    }
    if u16_at(18) != MACHINE {
        return Err(format!(
            "built for another machine (ELF machine {}, this host is {MACHINE})",
            u16_at(18)
        ));
    }
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54) as u64, u16_at(56) as u64);
    if phentsize as usize != PHDR_SIZE {
        return Err(format!("malformed ELF: program header size {phentsize}"));
    }
    let table_end = phoff
        .checked_add(phnum * phentsize)
        .filter(|end| *end <= len);
    let Some(table_end) = table_end else {
        return Err(format!(
            "truncated: its program headers end past the file's {len} bytes"
        ));
    };
    if table_end > bytes.len() as u64 {
        return Err(format!(
            "malformed ELF: its program headers end at byte {table_end}, past the first {} \
             bytes where a loader expects them",
            bytes.len()
        ));
    }
    for i in 0..phnum {
        let at = (phoff + i * phentsize) as usize;
        let (offset, filesz) = (u64_at(at + 8), u64_at(at + 32));
        match offset.checked_add(filesz) {
            Some(end) if end <= len => {}
            _ => {
                return Err(format!(
                    "truncated: segment {i} ends at byte {} but the file has {len}",
                    offset.saturating_add(filesz)
                ))
            }
        }
    }
    Ok(())
}

/// The plugin name `bytes` (a whole library file) declares in its `plugin-host` note, if it
/// has one and the name is valid ([`plugin_api::is_valid_name`]). Anything else (not a
/// 64-bit little-endian ELF file, no such note, a malformed file) is `None`.
pub(crate) fn declared_name(bytes: &[u8]) -> Option<String> {
    declared_name_in(&bytes).ok().flatten()
}

/// [`declared_name`] of the file at `path`, reading only the ELF header, the program
/// headers, the `PT_NOTE` segments and, if the note is not in one of those, the section
/// headers and the `SHT_NOTE` sections, each read bounded (never the whole file). `Err` only
/// if the file cannot be opened or read.
pub(crate) fn declared_name_in_file(path: &Path) -> io::Result<Option<String>> {
    // Non-blocking, so that a FIFO named like a plugin cannot hang the caller.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    declared_name_in(&BoundedFile {
        file,
        len: meta.len(),
    })
}

/// At most this many bytes of program or section headers are read (about 18,000 program
/// headers or 16,000 section headers; a Rust cdylib has about a dozen and forty).
const MAX_TABLE_BYTES: u64 = 1 << 20;
/// At most this many bytes of one note segment or section are read; a library's notes take
/// about a hundred.
const MAX_NOTES_BYTES: u64 = 64 << 10;

/// Random access to a file's bytes.
trait Source {
    /// The `len` bytes at `offset`; `None` if they are not all inside the file.
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Option<Vec<u8>>>;
}

impl Source for &[u8] {
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Option<Vec<u8>>> {
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?));
        Ok(range.and_then(|range| self.get(range)).map(<[u8]>::to_vec))
    }
}

struct BoundedFile {
    file: File,
    len: u64,
}

impl Source for BoundedFile {
    fn read_at(&self, offset: u64, len: u64) -> io::Result<Option<Vec<u8>>> {
        let inside = offset.checked_add(len).is_some_and(|end| end <= self.len);
        let Some(len) = usize::try_from(len).ok().filter(|_| inside) else {
            return Ok(None);
        };
        let mut buf = vec![0; len];
        match self.file.read_exact_at(&mut buf, offset) {
            Ok(()) => Ok(Some(buf)),
            // The file shrank since we looked at its length.
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(err) => Err(err),
        }
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn declared_name_in(source: &impl Source) -> io::Result<Option<String>> {
    let descriptor = match plugin_note_descriptor(source)? {
        Some(descriptor) => descriptor,
        None => return Ok(None),
    };
    // The writer puts no NUL after the name; tolerate one from another writer.
    let end = descriptor
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |last| last + 1);
    let name = String::from_utf8(descriptor[..end].to_vec()).ok();
    Ok(name.filter(|name| plugin_api::is_valid_name(name)))
}

/// The descriptor of the first `plugin-host` name note: in the `PT_NOTE` segments, else in
/// the `SHT_NOTE` sections.
fn plugin_note_descriptor(source: &impl Source) -> io::Result<Option<Vec<u8>>> {
    const PT_NOTE: u32 = 4;
    const SHT_NOTE: u32 = 7;
    const PHDR_SIZE: u64 = 56;
    const SHDR_SIZE: u64 = 64;
    let Some(ehdr) = source.read_at(0, 64)? else {
        return Ok(None);
    };
    // Magic, 64-bit, little-endian.
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Ok(None);
    }
    let field16 = |at| u16_at(&ehdr, at).map_or(0, u64::from);
    let field64 = |at| u64_at(&ehdr, at).unwrap_or(0);

    let (phoff, phentsize, phnum) = (field64(32), field16(54), field16(56));
    if phentsize == PHDR_SIZE && phnum > 0 {
        if let Some(table) = read_table(source, phoff, phnum, PHDR_SIZE)? {
            for phdr in table.chunks_exact(PHDR_SIZE as usize) {
                if u32_at(phdr, 0) != Some(PT_NOTE) {
                    continue;
                }
                let (offset, size, align) = (u64_at(phdr, 8), u64_at(phdr, 32), u64_at(phdr, 48));
                if let Some(found) = notes_at(source, offset, size, align)? {
                    return Ok(Some(found));
                }
            }
        }
    }

    let (shoff, shentsize, mut shnum) = (field64(40), field16(58), field16(60));
    if shentsize != SHDR_SIZE || shoff == 0 {
        return Ok(None);
    }
    if shnum == 0 {
        // More sections than fit in e_shnum: the count is section 0's sh_size.
        shnum = match source.read_at(shoff, SHDR_SIZE)? {
            Some(first) => u64_at(&first, 32).unwrap_or(0),
            None => 0,
        };
    }
    if let Some(table) = read_table(source, shoff, shnum, SHDR_SIZE)? {
        for shdr in table.chunks_exact(SHDR_SIZE as usize) {
            if u32_at(shdr, 4) != Some(SHT_NOTE) {
                continue;
            }
            let (offset, size, align) = (u64_at(shdr, 24), u64_at(shdr, 32), u64_at(shdr, 48));
            if let Some(found) = notes_at(source, offset, size, align)? {
                return Ok(Some(found));
            }
        }
    }
    Ok(None)
}

/// A table of `count` entries of `entry_size` bytes at `offset`, if it is inside the file
/// and not larger than [`MAX_TABLE_BYTES`].
fn read_table(
    source: &impl Source,
    offset: u64,
    count: u64,
    entry_size: u64,
) -> io::Result<Option<Vec<u8>>> {
    match count.checked_mul(entry_size) {
        Some(len) if len <= MAX_TABLE_BYTES => source.read_at(offset, len),
        _ => Ok(None),
    }
}

/// Reads the notes of one segment or section (its first [`MAX_NOTES_BYTES`]) and returns
/// the descriptor of the `plugin-host` name note among them.
fn notes_at(
    source: &impl Source,
    offset: Option<u64>,
    size: Option<u64>,
    align: Option<u64>,
) -> io::Result<Option<Vec<u8>>> {
    let (Some(offset), Some(size)) = (offset, size) else {
        return Ok(None);
    };
    let Some(notes) = source.read_at(offset, size.min(MAX_NOTES_BYTES))? else {
        return Ok(None);
    };
    // Notes are 4-aligned, except in a segment or section aligned to 8 (GNU properties).
    let align = if align == Some(8) { 8 } else { 4 };
    Ok(find_plugin_note(&notes, align).map(<[u8]>::to_vec))
}

/// The descriptor of the first note in `notes` whose owner is [`note::OWNER`] and whose type
/// is [`note::TYPE_PLUGIN_NAME`]. Stops at the first note that does not fit.
fn find_plugin_note(notes: &[u8], align: usize) -> Option<&[u8]> {
    let align_up = |n: usize| Some(n.checked_add(align - 1)? / align * align);
    let mut at = 0usize;
    loop {
        let namesz = usize::try_from(u32_at(notes, at)?).ok()?;
        let descsz = usize::try_from(u32_at(notes, at.checked_add(4)?)?).ok()?;
        let kind = u32_at(notes, at.checked_add(8)?)?;
        let name_start = at.checked_add(12)?;
        let name_end = name_start.checked_add(namesz)?;
        let desc_start = align_up(name_end)?;
        let desc_end = desc_start.checked_add(descsz)?;
        let name = notes.get(name_start..name_end)?;
        let desc = notes.get(desc_start..desc_end)?;
        let owner = name.strip_suffix(b"\0").unwrap_or(name);
        if kind == note::TYPE_PLUGIN_NAME && owner == note::OWNER.as_bytes() {
            return Some(desc);
        }
        // Each step moves past at least the 12-byte header, so the loop ends.
        at = align_up(desc_end)?;
    }
}

#[cfg(target_arch = "x86_64")]
const MACHINE: u16 = 62;
#[cfg(target_arch = "aarch64")]
const MACHINE: u16 = 183;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the ELF check knows x86_64 and aarch64; add this machine's e_machine");

#[cfg(test)]
mod tests {
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
            let u64_at =
                |at: usize| u64::from_le_bytes(lib[at..at + 8].try_into().unwrap()) as usize;
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
}
