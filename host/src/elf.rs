//! A pre-flight check of a plugin file's ELF structure, before `dlopen` sees it.
//!
//! `dlopen` maps a library's segments straight from the file. If the file is shorter than
//! its program headers say (a truncated copy, a half-written download), the mapping still
//! succeeds, and the first touch of a page past the end of the file kills the whole process
//! with SIGBUS. Checking that every segment lies inside the file turns that into an error.

/// Checks that `bytes` is a 64-bit little-endian shared object for this machine whose
/// program headers and segments all lie inside it. The error is one line.
pub(crate) fn check(bytes: &[u8]) -> Result<(), String> {
    const EHDR_SIZE: usize = 64;
    const PHDR_SIZE: usize = 56;
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err("not a shared library: no ELF header".into());
    }
    if bytes.len() < EHDR_SIZE {
        return Err(format!(
            "truncated: {} bytes, shorter than an ELF header",
            bytes.len()
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
    let len = bytes.len() as u64;
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54) as u64, u16_at(56) as u64);
    if phentsize as usize != PHDR_SIZE {
        return Err(format!("malformed ELF: program header size {phentsize}"));
    }
    let table_end = phoff
        .checked_add(phnum * phentsize)
        .filter(|end| *end <= len);
    let Some(_) = table_end else {
        return Err(format!(
            "truncated: its program headers end past the file's {len} bytes"
        ));
    };
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
