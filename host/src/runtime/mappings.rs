//! How much memory a library that stayed mapped after `dlclose` still holds: the address
//! ranges `/proc/self/maps` lists for its private copy, added up.

use std::path::Path;

/// The bytes of address space mapped from the private copy at `path` (0 if it is not
/// mapped, or the map cannot be read).
pub(crate) fn mapped_bytes(path: &Path) -> u64 {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    bytes_in(&maps, &path.to_string_lossy())
}

/// The ranges of `maps` (the text of `/proc/PID/maps`) whose file is `path`, added up.
fn bytes_in(maps: &str, path: &str) -> u64 {
    maps.lines()
        .filter(|line| {
            // address perms offset dev inode pathname; a deleted file gets " (deleted)".
            let file = line.splitn(6, ' ').nth(5).unwrap_or("").trim_start();
            file.strip_suffix(" (deleted)").unwrap_or(file) == path
        })
        .filter_map(|line| {
            let (start, end) = line.split(' ').next()?.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            end.checked_sub(start)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranges_of_one_file_are_added_up() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 08:01 42                         /tmp/c/libhello-1.so
7f0000001000-7f0000003000 r-xp 00001000 08:01 42                         /tmp/c/libhello-1.so
7f0000003000-7f0000004000 rw-p 00003000 08:01 43                         /tmp/c/libhello-12.so (deleted)
7f0000004000-7f0000005000 rw-p 00000000 00:00 0
";
        assert_eq!(bytes_in(maps, "/tmp/c/libhello-1.so"), 0x3000);
        assert_eq!(bytes_in(maps, "/tmp/c/libhello-12.so"), 0x1000);
        assert_eq!(bytes_in(maps, "/tmp/c/libhello-2.so"), 0);
    }

    #[test]
    fn this_process_maps_its_own_binary() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(mapped_bytes(&exe) > 0);
    }
}
