//! OS templates: archives `NAME.tar.{gz,xz,zst}` in the template directory,
//! with an optional `overlay/NAME.tar.*` unpacked on top, installed onto an
//! empty root volume so that no entry escapes it.

use std::path::{Path, PathBuf};

use crate::error::ErrorCode;
use crate::names::TemplateName;

/// Archive suffixes, in the order they are looked for.
pub const SUFFIXES: [&str; 3] = ["tar.gz", "tar.xz", "tar.zst"];

/// A template found on disk.
#[derive(Debug, Clone)]
pub struct Template {
    /// Its name.
    pub name: TemplateName,
    /// The main archive.
    pub archive: PathBuf,
    /// The overlay archive, if any.
    pub overlay: Option<PathBuf>,
}

/// A template failure.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// No archive of that name.
    #[error("template {name} does not exist in {dir} (available: {})", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    NotFound {
        /// The name asked for.
        name: String,
        /// The template directory.
        dir: PathBuf,
        /// What exists.
        available: Vec<String>,
    },
    /// Unpacking failed.
    #[error("cannot unpack template {archive} into {target}: {problem}")]
    Unpack {
        /// The archive.
        archive: PathBuf,
        /// The root directory.
        target: PathBuf,
        /// What went wrong.
        problem: String,
    },
}

impl TemplateError {
    /// The error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            TemplateError::NotFound { .. } => ErrorCode::InvalidData,
            TemplateError::Unpack { .. } => ErrorCode::StorageFailed,
        }
    }
}

fn archive_in(dir: &Path, name: &str) -> Option<PathBuf> {
    SUFFIXES.iter().map(|s| dir.join(format!("{name}.{s}"))).find(|p| p.is_file())
}

/// The names of the templates in `dir`, sorted.
pub fn available(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    SUFFIXES.iter().find_map(|s| n.strip_suffix(&format!(".{s}")).map(str::to_string))
                })
                .filter(|n| TemplateName::new(n.as_str()).is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

/// Find the template `name`.
pub fn find(dir: &Path, name: &TemplateName) -> Result<Template, TemplateError> {
    match archive_in(dir, name.as_str()) {
        Some(archive) => Ok(Template { name: name.clone(), archive, overlay: archive_in(&dir.join("overlay"), name.as_str()) }),
        None => Err(TemplateError::NotFound { name: name.to_string(), dir: dir.to_path_buf(), available: available(dir) }),
    }
}

/// Unpack the template (and its overlay) into `target`.
pub fn install(t: &Template, target: &Path) -> Result<(), TemplateError> {
    Err(TemplateError::Unpack { archive: t.archive.clone(), target: target.to_path_buf(), problem: "unpacking is not implemented yet".into() })
}
