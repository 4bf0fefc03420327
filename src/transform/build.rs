//! `hosepipe transform build`: a Firehose Lambda handler, or a transform crate, made into a
//! component the daemon runs. Python handlers go through componentize-py with the adapter in
//! `transforms/lambda/python/hosepipe_lambda.py`; Node.js handlers are bundled by esbuild with
//! the adapter in `transforms/lambda/node/hosepipe_lambda.mjs` and go through componentize-js.
//! Both adapters turn a batch into the Lambda event and the handler's answer back. The tools
//! are installed into a project-local folder on first use, never by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The transform contract the components target.
const WIT: &str = include_str!("../../transforms/wit/transform.wit");
/// Maps a batch to a Lambda event and the handler's answer back (see its docstring).
const PYTHON_ADAPTER: &str = include_str!("../../transforms/lambda/python/hosepipe_lambda.py");
/// componentize-py's version (tried with this WIT and the daemon's wasmtime).
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// The same adapter for Node.js handlers, and the tools' pinned install: componentize-js
/// 0.23.0 (with the preview2-shim it works with), esbuild 0.28.2 and buffer 6.0.3.
const NODE_ADAPTER: &str = include_str!("../../transforms/lambda/node/hosepipe_lambda.mjs");
const NODE_BUILD: &str = include_str!("../../transforms/lambda/node/build.mjs");
const NODE_GLOBALS: &str = include_str!("../../transforms/lambda/node/node-globals.mjs");
const NODE_PACKAGE: &str = include_str!("../../transforms/lambda/node/package.json");
const NODE_LOCK: &str = include_str!("../../transforms/lambda/node/package-lock.json");

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// A Python handler file (`lambda_function.py`), a Node.js one (`index.mjs`, `index.js`),
    /// a directory of handler modules in one of the two, or a transform crate's directory
    /// (Cargo.toml).
    pub source: PathBuf,
    /// The component to write (default: `<name>.wasm` in the current directory; the name is
    /// the function name a `LambdaArn` ends with).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The handler, `module.function` (default: `<file stem>.lambda_handler` in Python,
    /// `<file stem>.handler` in Node.js; for a directory, Lambda's defaults
    /// `lambda_function.lambda_handler` and `index.handler`). A processor parameter `Handler`
    /// picks another of the component's modules at run time.
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
    let plan = plan(&source, args.handler.as_deref())?;
    let output = match &args.output {
        Some(o) => std::path::absolute(o).map_err(|e| e.to_string())?,
        None => std::path::absolute(format!("{}.wasm", plan.name)).map_err(|e| e.to_string())?,
    };
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let wit = work.path().join("wit");
    std::fs::create_dir_all(&wit).map_err(|e| e.to_string())?;
    std::fs::write(wit.join("transform.wit"), WIT).map_err(|e| e.to_string())?;
    match plan.language {
        Language::Python => python(&plan, &wit, work.path(), &tools, &output)?,
        Language::Node => node(&plan, &wit, work.path(), &tools, &output)?,
    }
    Ok(output)
}

/// The languages whose Lambda handlers the build takes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Language {
    Python,
    Node,
}

impl Language {
    fn of(file: &Path) -> Option<Language> {
        match file.extension()?.to_str()? {
            "py" => Some(Language::Python),
            "mjs" | "js" | "cjs" => Some(Language::Node),
            _ => None,
        }
    }

    /// Lambda's default handler in a directory (`lambda_function.py`, `index.mjs`).
    fn default_module(self) -> &'static str {
        match self {
            Language::Python => "lambda_function.lambda_handler",
            Language::Node => "index.handler",
        }
    }

    fn default_function(self) -> &'static str {
        match self {
            Language::Python => "lambda_handler",
            Language::Node => "handler",
        }
    }
}

/// The handler modules of a directory: `(module name, file)`, sorted, without private (`_x`),
/// hidden and test modules.
fn modules(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && Language::of(p).is_some())
        .filter_map(|p| {
            let stem = p.file_stem()?.to_string_lossy().to_string();
            let private = stem.starts_with(['_', '.'])
                || stem.starts_with("test_")
                || [".test", ".spec", ".config"]
                    .iter()
                    .any(|s| stem.ends_with(s));
            (!private).then_some((stem, p))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// What a handler build takes: the language, the directory on the module path, the modules
/// the component holds, the component's default name, and the default handler.
#[derive(Debug, PartialEq)]
struct Plan {
    language: Language,
    dir: PathBuf,
    modules: Vec<(String, PathBuf)>,
    name: String,
    handler: String,
}

fn plan(source: &Path, handler: Option<&str>) -> Result<Plan, String> {
    let not_a_handler = || {
        format!(
            "{}: not a Python (.py) or Node.js (.mjs, .js, .cjs) handler, a directory of them, \
             or a crate directory",
            source.display()
        )
    };
    let (language, dir, modules, name) = if source.is_dir() {
        let modules = modules(source)?;
        let languages: Vec<Language> = modules
            .iter()
            .filter_map(|(_, p)| Language::of(p))
            .collect();
        let language = match languages.first() {
            None => return Err(not_a_handler()),
            Some(&one) if languages.iter().all(|l| *l == one) => one,
            Some(_) => {
                return Err(format!(
                    "{}: holds both Python and Node.js modules; name the handler's file",
                    source.display()
                ));
            }
        };
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "handlers".into());
        (language, source.to_path_buf(), modules, name)
    } else {
        let language = Language::of(source).ok_or_else(not_a_handler)?;
        let stem = source
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .ok_or_else(|| format!("{}: no file name", source.display()))?;
        let dir = source.parent().unwrap_or(Path::new(".")).to_path_buf();
        (
            language,
            dir,
            vec![(stem.clone(), source.to_path_buf())],
            stem,
        )
    };
    let handler = match handler {
        Some(h) => h.to_string(),
        None if source.is_dir() => language.default_module().into(),
        None => format!("{}.{}", modules[0].0, language.default_function()),
    };
    Ok(Plan {
        language,
        dir,
        modules,
        name,
        handler,
    })
}

fn python(plan: &Plan, wit: &Path, work: &Path, tools: &Path, output: &Path) -> Result<(), String> {
    let componentize = componentize_py(tools)?;
    let adapter = work.join("adapter");
    std::fs::create_dir_all(&adapter).map_err(|e| e.to_string())?;
    std::fs::write(adapter.join("hosepipe_lambda.py"), PYTHON_ADAPTER)
        .map_err(|e| e.to_string())?;
    // The modules are imported here, so the component holds them and what they import.
    let mut build = String::from("# Written by `hosepipe transform build`.\n");
    for (m, _) in &plan.modules {
        build.push_str(&format!("import {m}  # noqa: F401\n"));
    }
    build.push_str(&format!("DEFAULT_HANDLER = {:?}\n", plan.handler));
    std::fs::write(adapter.join("hosepipe_lambda_build.py"), build).map_err(|e| e.to_string())?;
    let status = Command::new(&componentize)
        .arg("-d")
        .arg(wit)
        .args(["-w", "transformer", "componentize", "hosepipe_lambda", "-p"])
        .arg(&adapter)
        .arg("-p")
        .arg(&plan.dir)
        .arg("-o")
        .arg(output)
        .status()
        .map_err(|e| format!("{}: {e}", componentize.display()))?;
    if !status.success() {
        return Err(format!("componentize-py failed ({status})"));
    }
    Ok(())
}

/// The entry module esbuild bundles: the adapter, given every handler module by name.
fn node_entry(plan: &Plan, adapter: &Path) -> String {
    let quoted = |p: &Path| serde_json::Value::String(p.to_string_lossy().to_string());
    let mut entry = String::from("// Written by `hosepipe transform build`.\n");
    entry.push_str(&format!(
        "import {{ register }} from {};\n",
        quoted(adapter)
    ));
    let mut names = Vec::new();
    for (i, (m, file)) in plan.modules.iter().enumerate() {
        entry.push_str(&format!("import * as m{i} from {};\n", quoted(file)));
        names.push(format!("{}: m{i}", serde_json::Value::String(m.clone())));
    }
    entry.push_str(&format!(
        "register({{ {} }}, {});\nexport {{ init, process }} from {};\n",
        names.join(", "),
        serde_json::Value::String(plan.handler.clone()),
        quoted(adapter)
    ));
    entry
}

fn node(plan: &Plan, wit: &Path, work: &Path, tools: &Path, output: &Path) -> Result<(), String> {
    let tools = node_tools(tools)?;
    let adapter = work.join("hosepipe_lambda.mjs");
    std::fs::write(&adapter, NODE_ADAPTER).map_err(|e| e.to_string())?;
    let entry = work.join("entry.mjs");
    std::fs::write(&entry, node_entry(plan, &adapter)).map_err(|e| e.to_string())?;
    let status = Command::new("node")
        .arg(tools.join("build.mjs"))
        .arg(&entry)
        .arg(wit)
        .arg(output)
        .status()
        .map_err(|e| format!("node: {e}"))?;
    if !status.success() {
        return Err(format!("bundling or componentize-js failed ({status})"));
    }
    Ok(())
}

/// esbuild and componentize-js in `<tools>/node`, installed there (`npm ci` from the lock
/// file compiled into hosepipe) when missing or when this hosepipe pins other versions.
fn node_tools(tools: &Path) -> Result<PathBuf, String> {
    let dir = tools.join("node");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (file, text) in [
        ("build.mjs", NODE_BUILD),
        ("node-globals.mjs", NODE_GLOBALS),
    ] {
        std::fs::write(dir.join(file), text).map_err(|e| e.to_string())?;
    }
    let installed = dir.join("node_modules/.hosepipe-lock.json");
    if std::fs::read_to_string(&installed).ok().as_deref() == Some(NODE_LOCK) {
        return Ok(dir);
    }
    eprintln!(
        "installing esbuild and componentize-js into {} (once)",
        dir.display()
    );
    std::fs::write(dir.join("package.json"), NODE_PACKAGE).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("package-lock.json"), NODE_LOCK).map_err(|e| e.to_string())?;
    run_tool(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir),
    )?;
    std::fs::write(&installed, NODE_LOCK).map_err(|e| e.to_string())?;
    Ok(dir)
}

fn run_tool(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    match status.success() {
        true => Ok(()),
        false => Err(format!("{cmd:?} failed ({status})")),
    }
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
    run_tool(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run_tool(Command::new(venv.join("bin").join("pip")).args([
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
        let file = plan(&dir.path().join("parse_logs.py"), None).unwrap();
        assert_eq!(file.language, Language::Python);
        assert_eq!(file.dir, dir.path());
        assert_eq!(
            file.modules,
            [("parse_logs".into(), dir.path().join("parse_logs.py"))]
        );
        assert_eq!(file.name, "parse_logs");
        assert_eq!(file.handler, "parse_logs.lambda_handler");
        let all = plan(dir.path(), None).unwrap();
        let names: Vec<&str> = all.modules.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(names, ["lambda_function", "parse_logs"]);
        assert_eq!(all.handler, "lambda_function.lambda_handler");
        let picked = plan(dir.path(), Some("parse_logs.handle")).unwrap();
        assert_eq!(picked.handler, "parse_logs.handle");

        let node = tempfile::tempdir().unwrap();
        for f in ["index.mjs", "legacy.js", "util.test.js", "eslint.config.js"] {
            std::fs::write(node.path().join(f), "").unwrap();
        }
        let all = plan(node.path(), None).unwrap();
        assert_eq!(all.language, Language::Node);
        let names: Vec<&str> = all.modules.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(names, ["index", "legacy"]);
        assert_eq!(all.handler, "index.handler");
        let file = plan(&node.path().join("legacy.js"), None).unwrap();
        assert_eq!(file.handler, "legacy.handler");
        let entry = node_entry(&all, Path::new("/a/hosepipe_lambda.mjs"));
        assert!(entry.contains("register({ \"index\": m0, \"legacy\": m1 }, \"index.handler\");"));

        std::fs::write(node.path().join("other.py"), "").unwrap();
        assert!(
            plan(node.path(), None)
                .unwrap_err()
                .contains("both Python and Node.js")
        );
        assert!(plan(&node.path().join("notes.txt"), None).is_err());
    }
}
