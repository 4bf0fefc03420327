//! `hosepipe transform build`: a Firehose Lambda handler, or a transform crate, made into a
//! component the daemon runs. Python handlers go through componentize-py with the adapter in
//! `transforms/lambda/python/hosepipe_lambda.py` (the Lambda event in, the Lambda answer out);
//! the tools are installed into a project-local folder on first use, never by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The transform contract the components target.
const WIT: &str = include_str!("../../transforms/wit/transform.wit");
/// Maps a batch to a Lambda event and the handler's answer back (see its docstring).
const PYTHON_ADAPTER: &str = include_str!("../../transforms/lambda/python/hosepipe_lambda.py");
/// componentize-py's version (tried with this WIT and the daemon's wasmtime).
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// A Python handler file (`lambda_function.py`), a directory of Python modules, or a
    /// transform crate's directory (Cargo.toml).
    pub source: PathBuf,
    /// The component to write (default: `<name>.wasm` in the current directory; the name is
    /// the function name a `LambdaArn` ends with).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Python: the handler, `module.function` (default: `<file stem>.lambda_handler`; for a
    /// directory, `lambda_function.lambda_handler`, Lambda's default). A processor parameter
    /// `Handler` picks another of the component's modules at run time.
    #[arg(long)]
    pub handler: Option<String>,
    /// Where the build tools are installed (default: HOSEPIPE_TOOLS_DIR, else
    /// `.hosepipe/tools` in the current directory).
    #[arg(long, env = "HOSEPIPE_TOOLS_DIR")]
    pub tools_dir: Option<PathBuf>,
}

/// Builds the component; returns where it is.
pub fn run(args: BuildArgs) -> Result<PathBuf, String> {
    let source = std::path::absolute(&args.source).map_err(|e| e.to_string())?;
    let tools = args
        .tools_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".hosepipe/tools"));
    let tools = std::path::absolute(&tools).map_err(|e| e.to_string())?;
    if source.is_dir() && source.join("Cargo.toml").is_file() {
        return rust(&source, args.output.as_deref());
    }
    let is_python = source.extension().is_some_and(|e| e == "py")
        || (source.is_dir() && python_modules(&source)?.next().is_some());
    if !is_python {
        return Err(format!(
            "{}: not a Python handler (.py), a directory of them, or a crate directory",
            source.display()
        ));
    }
    python(&source, &args, &tools)
}

fn python_modules(dir: &Path) -> Result<impl Iterator<Item = String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".py")
                .filter(|stem| !stem.starts_with('_') && !stem.starts_with("test_"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names.into_iter())
}

/// What a Python build takes: the directory on the module path, the modules the component
/// imports, the component's default name, and the default handler.
#[derive(Debug, PartialEq)]
struct PythonPlan {
    dir: PathBuf,
    modules: Vec<String>,
    name: String,
    handler: String,
}

fn python_plan(source: &Path, handler: Option<&str>) -> Result<PythonPlan, String> {
    let (dir, modules, name) = if source.is_dir() {
        let modules: Vec<String> = python_modules(source)?.collect();
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "handlers".into());
        (source.to_path_buf(), modules, name)
    } else {
        let stem = source
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .ok_or_else(|| format!("{}: no file name", source.display()))?;
        let dir = source.parent().unwrap_or(Path::new(".")).to_path_buf();
        (dir, vec![stem.clone()], stem)
    };
    let handler = match handler {
        Some(h) => h.to_string(),
        None if source.is_dir() => "lambda_function.lambda_handler".into(),
        None => format!("{}.lambda_handler", modules[0]),
    };
    Ok(PythonPlan {
        dir,
        modules,
        name,
        handler,
    })
}

fn python(source: &Path, args: &BuildArgs, tools: &Path) -> Result<PathBuf, String> {
    let PythonPlan {
        dir,
        modules,
        name,
        handler,
    } = python_plan(source, args.handler.as_deref())?;
    let output = match &args.output {
        Some(o) => std::path::absolute(o).map_err(|e| e.to_string())?,
        None => std::path::absolute(format!("{name}.wasm")).map_err(|e| e.to_string())?,
    };
    let componentize = componentize_py(tools)?;
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let wit = work.path().join("wit");
    let adapter = work.path().join("adapter");
    std::fs::create_dir_all(&wit).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&adapter).map_err(|e| e.to_string())?;
    std::fs::write(wit.join("transform.wit"), WIT).map_err(|e| e.to_string())?;
    std::fs::write(adapter.join("hosepipe_lambda.py"), PYTHON_ADAPTER)
        .map_err(|e| e.to_string())?;
    // The modules are imported here, so the component holds them and what they import.
    let mut build = String::from("# Written by `hosepipe transform build`.\n");
    for m in &modules {
        build.push_str(&format!("import {m}  # noqa: F401\n"));
    }
    build.push_str(&format!("DEFAULT_HANDLER = {handler:?}\n"));
    std::fs::write(adapter.join("hosepipe_lambda_build.py"), build).map_err(|e| e.to_string())?;
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let status = Command::new(&componentize)
        .arg("-d")
        .arg(&wit)
        .args(["-w", "transformer", "componentize", "hosepipe_lambda", "-p"])
        .arg(&adapter)
        .arg("-p")
        .arg(&dir)
        .arg("-o")
        .arg(&output)
        .status()
        .map_err(|e| format!("{}: {e}", componentize.display()))?;
    if !status.success() {
        return Err(format!("componentize-py failed ({status})"));
    }
    Ok(output)
}

/// componentize-py in `<tools>/python`, installed there first if missing.
fn componentize_py(tools: &Path) -> Result<PathBuf, String> {
    let venv = tools.join("python");
    let bin = venv.join("bin").join("componentize-py");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!(
        "installing {COMPONENTIZE_PY} into {} (once)",
        venv.display()
    );
    let run = |cmd: &mut Command| -> Result<(), String> {
        let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
        match status.success() {
            true => Ok(()),
            false => Err(format!("{cmd:?} failed ({status})")),
        }
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        COMPONENTIZE_PY,
    ]))?;
    Ok(bin)
}

/// A transform crate built for wasm32-wasip2 (in its own target directory).
fn rust(dir: &Path, output: Option<&Path>) -> Result<PathBuf, String> {
    let metadata = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    let meta: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    let manifest = dir.join("Cargo.toml");
    let name = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
        .and_then(|p| p["name"].as_str())
        .ok_or_else(|| format!("{}: no package", manifest.display()))?
        .to_string();
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed ({status})"));
    }
    let built = PathBuf::from(meta["target_directory"].as_str().unwrap_or("target"))
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let output = output.map_or_else(|| PathBuf::from(format!("{name}.wasm")), Path::to_path_buf);
    std::fs::copy(&built, &output).map_err(|e| format!("{}: {e}", built.display()))?;
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_or_a_directory_of_handlers() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "lambda_function.py",
            "parse_logs.py",
            "_private.py",
            "test_it.py",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let file = python_plan(&dir.path().join("parse_logs.py"), None).unwrap();
        assert_eq!(file.dir, dir.path());
        assert_eq!(file.modules, ["parse_logs"]);
        assert_eq!(file.name, "parse_logs");
        assert_eq!(file.handler, "parse_logs.lambda_handler");
        let all = python_plan(dir.path(), None).unwrap();
        assert_eq!(all.modules, ["lambda_function", "parse_logs"]);
        assert_eq!(all.handler, "lambda_function.lambda_handler");
        let picked = python_plan(dir.path(), Some("parse_logs.handle")).unwrap();
        assert_eq!(picked.handler, "parse_logs.handle");
    }
}
