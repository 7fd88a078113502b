//! Pins the plugin catalogue sets: what runs is byte for byte what was published. The
//! catalogue's agent pins a plugin to the SHA-256 it published before it writes the file;
//! a load of that plugin whose private copy (the bytes `dlopen` maps) has another SHA-256
//! is refused, as a host.toml `sha256` pin refuses it.

use super::*;

impl Host {
    /// Pins `plugin` to `sha256` (lowercase hex), or removes its pin (`None`). Loads from
    /// then on compare their private copy's SHA-256 with it.
    pub fn pin_published(&self, plugin: &str, sha256: Option<String>) {
        let mut state = self.state();
        match sha256 {
            Some(sha256) => state.published_pins.insert(plugin.to_owned(), sha256),
            None => state.published_pins.remove(plugin),
        };
    }

    /// The directory this host's private copies go to (only this user can write it).
    pub(crate) fn copy_dir_path(&self) -> &Path {
        self.inner.copy_dir.path()
    }
}

/// Refuses a load of `name` whose SHA-256 is not the one the catalogue published.
pub(super) fn check_published_pin(
    path: &Path,
    name: &str,
    published: Option<&String>,
    sha256: Option<[u8; 32]>,
) -> Result<(), LoadError> {
    let Some(published) = published else {
        return Ok(());
    };
    let actual = sha256.map(|s| hex(&s));
    if actual.as_deref() == Some(published.as_str()) {
        return Ok(());
    }
    Err(LoadError::new(
        path,
        LoadErrorKind::HashMismatch,
        format!(
            "plugin {name}: SHA-256 is {}, but the catalogue published {published}",
            actual.as_deref().unwrap_or("unknown")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_pin_refuses_other_content() {
        let path = Path::new("/p/x.so");
        let sha = [7u8; 32];
        assert!(check_published_pin(path, "x", None, Some(sha)).is_ok());
        assert!(check_published_pin(path, "x", Some(&hex(&sha)), Some(sha)).is_ok());
        let err = check_published_pin(path, "x", Some(&hex(&[8u8; 32])), Some(sha)).unwrap_err();
        assert_eq!(err.kind(), LoadErrorKind::HashMismatch);
        assert!(
            err.message().contains("but the catalogue published 0808"),
            "{err}"
        );
        assert!(check_published_pin(path, "x", Some(&hex(&sha)), None).is_err());
    }
}
