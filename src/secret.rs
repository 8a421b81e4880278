//! Secrets: values that must never reach a log line, an error message, `Debug` output or a
//! metric label.
//!
//! Every secret setting (`oneview.password`, `pagerduty.routing_key`, ...) can be given inline
//! or through a `*_file` twin. File-backed secrets are re-read when the file changes (its
//! modification time or length moves), so a Kubernetes Secret or a Vault agent can rotate them
//! without a restart: the next login or the next event uses the new value, and a log line names
//! the secret that changed, never its value.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};

/// Where a secret comes from, and the last value read from it.
pub struct Secret {
    /// The configuration key the secret was given under, used in errors and logs
    /// (`appliances[2].password` for one of several appliances).
    name: Arc<str>,
    source: Source,
    /// Cache of the file content keyed by (mtime, len): reading a small file on every use would
    /// also be fine, but the cache lets us log exactly once when the value changes.
    cache: Mutex<Option<Cached>>,
}

enum Source {
    Inline(SecretString),
    File(PathBuf),
}

struct Cached {
    stamp: (Option<SystemTime>, u64),
    value: SecretString,
}

/// Reading a secret file failed. The message names the key and the path, never the content.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "cannot read `{key}` from {path}: {source}; check that the file exists and is readable by the bridge's user"
    )]
    Read {
        key: Arc<str>,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{key}` file {path} is empty; write the secret into it (a trailing newline is fine)")]
    Empty { key: Arc<str>, path: PathBuf },
}

impl Secret {
    /// A secret given inline in the configuration.
    pub fn inline(name: impl Into<Arc<str>>, value: SecretString) -> Self {
        Self {
            name: name.into(),
            source: Source::Inline(value),
            cache: Mutex::new(None),
        }
    }

    /// A secret read from a file, now and whenever the file changes.
    pub fn file(name: impl Into<Arc<str>>, path: PathBuf) -> Self {
        Self {
            name: name.into(),
            source: Source::File(path),
            cache: Mutex::new(None),
        }
    }

    /// The configuration key of this secret (`oneview.password`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file this secret is read from, if any.
    pub fn path(&self) -> Option<&Path> {
        match &self.source {
            Source::File(p) => Some(p),
            Source::Inline(_) => None,
        }
    }

    /// The current value. For file-backed secrets this stats the file and re-reads it when it
    /// changed, which costs one `stat` per call.
    pub fn current(&self) -> Result<SecretString, SecretError> {
        let path = match &self.source {
            Source::Inline(v) => return Ok(v.clone()),
            Source::File(p) => p,
        };
        let read_err = |source| SecretError::Read {
            key: self.name.clone(),
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        let stamp = (meta.modified().ok(), meta.len());
        // A poisoned lock only means another thread panicked mid-update of a cache; the cache is
        // re-validated below, so recovering the guard is safe.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref()
            && c.stamp == stamp
        {
            return Ok(c.value.clone());
        }
        let raw = std::fs::read_to_string(path).map_err(read_err)?;
        let value = trim_secret(&raw);
        if value.is_empty() {
            return Err(SecretError::Empty {
                key: self.name.clone(),
                path: path.clone(),
            });
        }
        let value = SecretString::from(value.to_owned());
        if let Some(old) = cache.as_ref()
            && old.value.expose_secret() != value.expose_secret()
        {
            tracing::info!(secret = %self.name, path = %path.display(), "secret file changed; using the new value from now on");
        }
        *cache = Some(Cached {
            stamp,
            value: value.clone(),
        });
        Ok(value)
    }
}

/// Secret files written by `echo`, editors, Kubernetes or Vault often end in a newline.
pub fn trim_secret(raw: &str) -> &str {
    raw.trim_end_matches(['\n', '\r'])
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Source::Inline(_) => write!(f, "Secret({}: <redacted>)", self.name),
            Source::File(p) => write!(f, "Secret({}: file {})", self.name, p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_secret_is_trimmed_and_reloaded_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "first-value\n").unwrap();
        let s = Secret::file("oneview.password", p.clone());
        assert_eq!(s.current().unwrap().expose_secret(), "first-value");
        std::fs::write(&p, "second-value-longer\r\n").unwrap();
        assert_eq!(s.current().unwrap().expose_secret(), "second-value-longer");
    }

    #[test]
    fn debug_never_shows_value() {
        let s = Secret::inline(
            "pagerduty.routing_key",
            SecretString::from("R0UT1NGKEY".to_owned()),
        );
        let d = format!("{s:?}");
        assert!(!d.contains("R0UT1NGKEY"), "{d}");
    }

    #[test]
    fn empty_file_is_an_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "\n").unwrap();
        let e = Secret::file("oneview.password", p).current().unwrap_err();
        assert!(e.to_string().contains("oneview.password"));
    }
}
