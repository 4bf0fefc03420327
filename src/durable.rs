//! Writing a file so that a crash or power cut leaves either the old contents or the new ones,
//! never a mix and never nothing: write a temporary file beside it, fsync it, rename it over
//! the old one, fsync the directory (the rename itself is only durable once the directory is).
//!
//! Every file that must survive a crash is written here: the spool checkpoints,
//! `streams.json`, the keyring, the agent's checkpoints, the transform compile cache and
//! `hosepipe decrypt -o`. Moving a file aside (a damaged segment, a deleted stream's spool) goes
//! through [`rename`]. A tidy test checks that nothing else renames files into place.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Who may read the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The process's umask decides (usually 0644).
    Default,
    /// Owner only (0600): key material.
    Private,
}

/// Replaces `path` with `bytes`, durably. The parent directory is created if missing.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, Access::Default, |w| w.write_all(bytes))
}

/// Replaces `path` with what `fill` writes, durably, with the given access. When `fill` fails,
/// the old file is left as it was and the temporary file is removed.
pub fn write_with<T>(
    path: &Path,
    access: Access,
    fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<T>,
) -> io::Result<T> {
    let dir = parent(path);
    std::fs::create_dir_all(&dir)?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if access == Access::Private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        }
        let mut w = BufWriter::new(options.open(&tmp)?);
        let out = fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        sync_dir(&dir)?;
        Ok(out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Moves `from` to `to` (same file system) and makes the move durable in both directories.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    let (a, b) = (parent(from), parent(to));
    sync_dir(&b)?;
    if a != b {
        sync_dir(&a)?;
    }
    Ok(())
}

/// Makes the directory's entries (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `<dir>/.<name>.tmp`: one per file, so a crash leaves at most one, overwritten next time.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent(path).join(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        write(&path, b"one").unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_failed_fill_keeps_the_old_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        write(&path, b"old").unwrap();
        let err = write_with(&path, Access::Default, |w| {
            w.write_all(b"half")?;
            Err::<(), _>(io::Error::other("cut"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "cut");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(!temp_path(&path).exists());
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        write_with(&path, Access::Private, |w| w.write_all(b"{}")).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rename_moves_across_directories() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("a");
        std::fs::write(&from, b"x").unwrap();
        std::fs::create_dir(dir.path().join("aside")).unwrap();
        let to = dir.path().join("aside/a");
        rename(&from, &to).unwrap();
        assert!(!from.exists());
        assert_eq!(std::fs::read(&to).unwrap(), b"x");
    }
}
