//! Names the build for `hosepipe --version`: the commit and its date (from git, when the source
//! is a checkout), the target and the profile.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    // A new commit changes HEAD's ref: build again then (only the files that exist, or cargo
    // would run this every time).
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-env-changed=HOSEPIPE_BUILD_COMMIT");
    let commit = std::env::var("HOSEPIPE_BUILD_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown commit".into());
    let date = git(&["log", "-1", "--format=%cs"]).unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_default();
    let profile = std::env::var("PROFILE").unwrap_or_default();
    let features = if std::env::var_os("CARGO_FEATURE_ICEBERG").is_some() {
        "iceberg"
    } else {
        "none"
    };
    println!(
        "cargo:rustc-env=HOSEPIPE_BUILD={} ({commit}{}{date}, {target}, {profile}, features: {features})",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
        if date.is_empty() { "" } else { " " },
    );
    println!("cargo:rustc-env=HOSEPIPE_COMMIT={commit}");
}
