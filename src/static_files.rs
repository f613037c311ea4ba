//! The dashboard's files, served at `/` by every shard.
//!
//! Read once at start into memory (`web.dir`, at most `web.max_bytes`):
//! serving never touches the filesystem from a shard, so a request cannot
//! block the event loop, and a path is only ever a key into this map, so
//! no request can name a file outside the directory.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WebError {
    #[error("web.dir {dir}: {msg}")]
    Read { dir: String, msg: String },
    #[error("web.dir {dir} holds more than web.max_bytes ({max} bytes)")]
    TooLarge { dir: String, max: usize },
}

pub struct StaticFiles {
    files: HashMap<String, (Bytes, &'static str)>,
    /// Why there is no dashboard, when there is none (shown at `/`).
    missing: Option<String>,
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

impl StaticFiles {
    pub fn none(why: &str) -> Self {
        Self {
            files: HashMap::new(),
            missing: Some(why.to_owned()),
        }
    }

    /// Loads `dir` (recursively). An empty `dir` means no dashboard; a
    /// directory that does not exist is reported at `/`, not fatal, so the
    /// gateway runs before the dashboard is built.
    pub fn load(dir: &str, max: usize) -> Result<Self, WebError> {
        if dir.is_empty() {
            return Ok(Self::none(
                "no dashboard on this gateway: build it with `cd web && npm ci && npm run build` and point the gateway at it with web.dir = \"web/dist\" (or SLUICE_WEB_DIR=web/dist)",
            ));
        }
        let root = Path::new(dir);
        if !root.join("index.html").is_file() {
            return Ok(Self::none(&format!(
                "dashboard not built: {dir}/index.html is missing (build it with `cd web && npm ci && npm run build`; web.dir / SLUICE_WEB_DIR names the folder)"
            )));
        }
        let mut files = HashMap::new();
        let mut total = 0usize;
        let mut stack = vec![root.to_path_buf()];
        let err = |msg: String| WebError::Read {
            dir: dir.to_owned(),
            msg,
        };
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(|e| err(e.to_string()))? {
                let p = e.map_err(|e| err(e.to_string()))?.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p
                    .strip_prefix(root)
                    .map_err(|e| err(e.to_string()))?
                    .to_string_lossy()
                    .replace('\\', "/");
                let body = std::fs::read(&p).map_err(|e| err(format!("{}: {e}", p.display())))?;
                total += body.len();
                if total > max {
                    return Err(WebError::TooLarge {
                        dir: dir.to_owned(),
                        max,
                    });
                }
                let url = format!("/{rel}");
                files.insert(url.clone(), (Bytes::from(body), content_type(&url)));
            }
        }
        Ok(Self {
            files,
            missing: None,
        })
    }

    /// The file for a request path (`/` is `/index.html`).
    pub fn get(&self, path: &str) -> Option<(Bytes, &'static str)> {
        let key = if path == "/" { "/index.html" } else { path };
        self.files.get(key).cloned()
    }

    pub fn missing(&self) -> Option<&str> {
        self.missing.as_deref()
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_what_was_loaded() {
        let d = std::env::temp_dir().join(format!("sluice-web-{}", std::process::id()));
        std::fs::create_dir_all(d.join("assets")).unwrap();
        std::fs::write(d.join("index.html"), "<html>").unwrap();
        std::fs::write(d.join("assets/app.js"), "x()").unwrap();
        let s = StaticFiles::load(d.to_str().unwrap(), 1 << 20).unwrap();
        assert_eq!(s.get("/").unwrap().1, "text/html; charset=utf-8");
        assert_eq!(&s.get("/assets/app.js").unwrap().0[..], b"x()");
        assert!(s.get("/../etc/passwd").is_none());
        assert!(s.get("/assets/../index.html").is_none());
        assert!(matches!(
            StaticFiles::load(d.to_str().unwrap(), 3),
            Err(WebError::TooLarge { .. })
        ));
        let none = StaticFiles::load("/nonexistent-sluice-web", 1 << 20).unwrap();
        assert!(none.missing().unwrap().contains("npm run build"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
