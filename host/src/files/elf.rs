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
mod tests;
