//! Registry credentials from Docker's `config.json` (`auths.HOST.auth` = base64 of
//! `user:password`, or `username`/`password` fields). Credential helpers are not run.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::reference::normalize_registry;

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
}

/// A key of `auths` reduced to a registry name: `https://index.docker.io/v1/` is `docker.io`.
fn key_to_registry(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    normalize_registry(key.split('/').next().unwrap_or(key))
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Username and password for `registry` (a host as in the reference or the mirror), if the
/// file exists and names it. An unreadable or malformed file is an error worth reporting.
pub fn credentials_for(config: &Path, registry: &str) -> Result<Option<(String, String)>, String> {
    let text = match std::fs::read_to_string(config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", config.display())),
    };
    let parsed: DockerConfig = serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", config.display()))?;
    let wanted = normalize_registry(registry);
    for (key, entry) in parsed.auths {
        if key_to_registry(&key) != wanted {
            continue;
        }
        if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| format!("{}: auth for {key} is not base64: {e}", config.display()))?;
            let decoded =
                String::from_utf8(decoded).map_err(|_| format!("{}: auth for {key} is not UTF-8", config.display()))?;
            let Some((user, password)) = decoded.split_once(':') else {
                return Err(format!("{}: auth for {key} is not user:password", config.display()));
            };
            return Ok(Some((user.to_owned(), password.to_owned())));
        }
        if let (Some(user), Some(password)) = (entry.username, entry.password) {
            return Ok(Some((user, password)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3:cret");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}},
                    "127.0.0.1:5000": {{"username": "bob", "password": "pw"}}}}}}"#
            ),
        )
        .unwrap();
        assert_eq!(
            credentials_for(&path, "docker.io").unwrap(),
            Some(("alice".into(), "s3:cret".into()))
        );
        assert_eq!(
            credentials_for(&path, "index.docker.io").unwrap(),
            Some(("alice".into(), "s3:cret".into()))
        );
        assert_eq!(
            credentials_for(&path, "127.0.0.1:5000").unwrap(),
            Some(("bob".into(), "pw".into()))
        );
        assert_eq!(credentials_for(&path, "quay.io").unwrap(), None);
        assert_eq!(credentials_for(&dir.path().join("missing.json"), "x").unwrap(), None);
        std::fs::write(&path, "not json").unwrap();
        assert!(credentials_for(&path, "x").is_err());
    }
}
