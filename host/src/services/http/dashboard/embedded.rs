//! The dashboard's files, compiled into the binary with `include_bytes!`: a fixed table,
//! so the user needs no build step, no CDN and no files beside the binary. A unit test
//! checks that every file of `assets/` is in the table.

use std::sync::LazyLock;

/// One file of the dashboard.
#[derive(Debug)]
pub(crate) struct Asset {
    /// Its name under `/assets/` (`index.html` is served at `/`).
    pub(crate) name: &'static str,
    /// Its `Content-Type`.
    pub(crate) content_type: &'static str,
    /// Its bytes.
    pub(crate) body: &'static [u8],
    /// Its strong `ETag` (quoted XXH3 of the bytes), for `If-None-Match`.
    pub(crate) etag: String,
}

macro_rules! asset {
    ($name:literal) => {
        ($name, include_bytes!(concat!("assets/", $name)).as_slice())
    };
}

/// Every file, as compiled in.
const FILES: [(&str, &[u8]); 10] = [
    asset!("index.html"),
    asset!("style.css"),
    asset!("app.js"),
    asset!("api.js"),
    asset!("ui.js"),
    asset!("plugins.js"),
    asset!("run.js"),
    asset!("tasks.js"),
    asset!("fleet.js"),
    asset!("icon.svg"),
];

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|&(name, body)| Asset {
            name,
            content_type: content_type(name),
            body,
            etag: format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(body)),
        })
        .collect()
});

/// The file named `name`, if the dashboard has one.
pub(crate) fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.name == name)
}

/// The `Content-Type` of a file, by its extension.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_assets_folder_is_compiled_in() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/services/http/dashboard/assets"
        );
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("the assets folder")
            .map(|entry| {
                entry
                    .expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        on_disk.sort();
        let mut compiled: Vec<String> = FILES.iter().map(|(n, _)| (*n).to_owned()).collect();
        compiled.sort();
        assert_eq!(on_disk, compiled, "assets/ and FILES in embedded.rs differ");
    }

    #[test]
    fn content_types_and_etags() {
        let index = find("index.html").expect("index.html");
        assert_eq!(index.content_type, "text/html; charset=utf-8");
        assert_eq!(
            find("app.js").map(|a| a.content_type),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(
            find("style.css").map(|a| a.content_type),
            Some("text/css; charset=utf-8")
        );
        assert_eq!(
            find("icon.svg").map(|a| a.content_type),
            Some("image/svg+xml")
        );
        assert!(index.etag.starts_with('"') && index.etag.ends_with('"') && index.etag.len() == 18);
        assert_ne!(find("app.js").map(|a| &a.etag), Some(&index.etag));
        assert!(find("../Cargo.toml").is_none());
        assert!(find("missing.js").is_none());
    }
}
