//! The shape docs/ARCHITECTURE.md promises, checked on the source itself: only
//! `transport/` names NATS, the top-level modules of `src/` import each other without a
//! cycle, no function in `src/` is longer than 80 lines (declarative tables excepted, by
//! name below), and `beamline_worker --help` answers on stdout with exit 0.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FN_LINES: usize = 80;

/// Functions allowed past [`MAX_FN_LINES`]: declarative tables, each with why.
const LONG_TABLES: &[(&str, &str, &str)] = &[(
    "src/telemetry/metrics.rs",
    "new",
    "the table of every metric's name, help and labels",
)];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The source with comments, string and char literals blanked (newlines kept), so that
/// what is left is code: braces balance and names are real uses.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, s: &[u8]| {
        out.extend(s.iter().map(|&c| if c == b'\n' { b'\n' } else { b' ' }))
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let ident_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let end = if rest.starts_with(b"//") {
            rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            find(rest, b"*/").map_or(rest.len(), |e| e + 2)
        } else if let Some(n) = raw_string_len(rest).filter(|_| !ident_before) {
            n
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1).min(rest.len())
        } else if rest[0] == b'\'' {
            char_literal_len(rest).unwrap_or(0)
        } else {
            0
        };
        if end == 0 {
            out.push(b[i]);
            i += 1;
        } else {
            blank(&mut out, &rest[..end]);
            i += end;
        }
    }
    String::from_utf8(out).expect("blanking keeps UTF-8 boundaries of code")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `r"…"`, `r#"…"#`, `br"…"`: its whole length.
fn raw_string_len(s: &[u8]) -> Option<usize> {
    let start = if s.starts_with(b"br") {
        2
    } else if s.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = s[start..].iter().take_while(|&&c| c == b'#').count();
    if s.get(start + hashes) != Some(&b'"') {
        return None;
    }
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let body = start + hashes + 1;
    find(&s[body..], &close).map(|e| body + e + close.len())
}

/// `'x'`, `'\n'`, `'\u{..}'`: its length; `None` for a lifetime.
fn char_literal_len(s: &[u8]) -> Option<usize> {
    if s.get(1) == Some(&b'\\') {
        return s[2..].iter().position(|&c| c == b'\'').map(|e| e + 3);
    }
    let ch = std::str::from_utf8(&s[1..s.len().min(6)])
        .ok()
        .or_else(|| std::str::from_utf8(&s[1..s.len().min(5)]).ok())
        .or_else(|| std::str::from_utf8(&s[1..s.len().min(4)]).ok())
        .or_else(|| std::str::from_utf8(&s[1..s.len().min(3)]).ok())?
        .chars()
        .next()?;
    let n = ch.len_utf8();
    (s.get(1 + n) == Some(&b'\'')).then_some(n + 2)
}

/// Every `fn` with a body: (name, first line, lines).
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let b = code.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(at) = code[i..].find("fn ").map(|p| p + i) {
        i = at + 3;
        if at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_') {
            continue;
        }
        let name: String = code[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        // The body starts at the first `{` before any `;` (a declaration has none).
        let Some(open) = code[i..].find(['{', ';']).map(|p| p + i) else {
            break;
        };
        if b[open] == b';' {
            continue;
        }
        let mut depth = 0usize;
        let mut close = open;
        for (j, &c) in b.iter().enumerate().skip(open) {
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let first = code[..at].matches('\n').count() + 1;
        let last = code[..close].matches('\n').count() + 1;
        found.push((name, first, last - first + 1));
    }
    found
}

fn sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(root())
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            (rel, code_only(&std::fs::read_to_string(&p).expect("read")))
        })
        .collect()
}

#[test]
fn the_scanner_sees_code_not_comments_or_strings() {
    let code = code_only(
        "let a = \"fn x() {\"; // fn y() {\nlet c = '{'; let l: &'a str = r#\"}\"#;\nfn z() {\n}\n",
    );
    assert!(!code.contains("fn x") && !code.contains("fn y"), "{code}");
    assert_eq!(functions(&code), vec![("z".to_owned(), 3, 2)]);
    assert_eq!(
        code.matches('{').count(),
        code.matches('}').count(),
        "{code}"
    );
}

#[test]
fn only_transport_names_nats() {
    let leaks: Vec<String> = sources()
        .into_iter()
        .filter(|(path, _)| !path.starts_with("src/transport/"))
        .filter(|(_, code)| code.contains("async_nats"))
        .map(|(path, _)| path)
        .collect();
    assert!(
        leaks.is_empty(),
        "async_nats outside src/transport/: {leaks:?}"
    );
}

#[test]
fn no_function_in_src_is_longer_than_80_lines() {
    let mut long = Vec::new();
    for (path, code) in sources() {
        for (name, line, lines) in functions(&code) {
            let table = LONG_TABLES.iter().any(|(p, n, _)| *p == path && *n == name);
            if lines > MAX_FN_LINES && !table {
                long.push(format!("{path}:{line} fn {name}: {lines} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
    // Every exception still exists (a stale entry would hide a new long function).
    for (path, name, why) in LONG_TABLES {
        let code = code_only(&std::fs::read_to_string(root().join(path)).expect("read"));
        assert!(
            functions(&code)
                .iter()
                .any(|(n, _, l)| n == name && *l > MAX_FN_LINES),
            "{path} fn {name} ({why}) is no longer a long table: drop it from LONG_TABLES"
        );
    }
}

#[test]
fn the_top_level_modules_import_each_other_without_a_cycle() {
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let module_of = |path: &str| {
        let rest = path.trim_start_matches("src/");
        rest.split('/')
            .next()
            .unwrap_or(rest)
            .trim_end_matches(".rs")
            .to_owned()
    };
    let sources = sources();
    let modules: BTreeSet<String> = sources
        .iter()
        .map(|(p, _)| module_of(p))
        .filter(|m| m != "main" && m != "lib")
        .collect();
    for (path, code) in &sources {
        let from = module_of(path);
        if !modules.contains(&from) {
            continue;
        }
        for (at, _) in code.match_indices("crate::") {
            let to: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if to != from && modules.contains(&to) {
                deps.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Depth-first search from every module; a path back to a module on the stack is a cycle.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if !done.insert(m.to_owned()) {
            return None;
        }
        stack.push(m.to_owned());
        for d in deps.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, deps, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in &modules {
        let found = visit(m, &deps, &mut Vec::new(), &mut done);
        assert!(
            found.is_none(),
            "import cycle: {}",
            found.unwrap_or_default().join(" → ")
        );
    }
    // The leaves the architecture names stay leaves.
    for leaf in ["contract", "host"] {
        assert!(
            deps.get(leaf).is_none_or(BTreeSet::is_empty),
            "{leaf} imports {:?}",
            deps[leaf]
        );
    }
    let blocks: Vec<_> = deps.get("blocks").into_iter().flatten().collect();
    assert!(
        blocks
            .iter()
            .all(|d| ["config", "contract", "policy"].contains(&d.as_str())),
        "blocks/ is a leaf over config, contract and policy; it imports {blocks:?}"
    );
}

#[test]
fn help_answers_on_stdout_with_exit_0() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_beamline_worker"))
        .arg("--help")
        .output()
        .expect("run beamline_worker --help");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for flag in [
        "--nats-url",
        "--fs-root",
        "--max-cpu-time-ms",
        "--shutdown-grace-ms",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}:\n{stdout}");
    }
}
